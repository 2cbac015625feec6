"""The ``lmcache-core`` entry point: subcommand registry, help, version, usage errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import lmcache_core
from lmcache_core.cli.main import COMMANDS, build_parser, main


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lmcache_core.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_registry_holds_info_and_bench_kernels() -> None:
    assert COMMANDS["info"] == "lmcache_core.cli.info"
    assert COMMANDS["bench kernels"] == "lmcache_core.cli.bench_kernels"


def test_two_word_commands_are_grouped_under_their_first_word() -> None:
    parser = build_parser()
    args = parser.parse_args(["bench", "kernels", "--quick", "--repeats", "2"])
    assert args.command_name == "bench kernels" and args.quick and args.repeats == 2
    args = parser.parse_args(["info", "--json"])
    assert args.command_name == "info" and args.json


def test_a_registry_entry_of_three_words_is_refused() -> None:
    with pytest.raises(ValueError, match="one or two words"):
        build_parser({"bench kernels extra": "lmcache_core.cli.bench_kernels"})


def test_help_lists_every_subcommand() -> None:
    top = _cli("--help")
    assert top.returncode == 0
    assert "info" in top.stdout and "bench" in top.stdout
    bench = _cli("bench", "--help")
    assert bench.returncode == 0 and "kernels" in bench.stdout


def test_version() -> None:
    proc = _cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"lmcache-core {lmcache_core.__version__}"


def test_unknown_subcommand_is_a_usage_error() -> None:
    proc = _cli("no-such-command")
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr and "info" in proc.stderr


def test_cli_errors_print_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(["bench", "kernels", "--repeats", "0"])
    err = capsys.readouterr().err
    assert status == 2
    assert "lmcache-core bench kernels: error: --repeats: expected an integer >= 1, given 0" in err
    assert "Traceback" not in err


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "lmcache-core"
    if not script.exists():
        pytest.skip(f"console script not installed next to {sys.executable}")
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and lmcache_core.__version__ in proc.stdout
