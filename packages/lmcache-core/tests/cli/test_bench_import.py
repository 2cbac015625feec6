"""``lmcache-core bench import``: the import-time figures, and the heavy modules beside them.

Values only (structure, ordering of min <= median <= max, the module lists); no time is asserted.
"""

from __future__ import annotations

import json

import pytest

from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.main import COMMANDS, build_parser


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = build_parser({"bench import": COMMANDS["bench import"]})
    args = parser.parse_args(["bench", "import", *argv])
    assert args.run(args) == 0
    return capsys.readouterr().out


def test_json_reports_median_min_max_and_no_heavy_module(capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_run(capsys, "--runs", "3", "--json", "--module", "lmcache_core"))
    (row,) = doc["rows"]
    assert (row["module"], row["runs"], row["heavy_modules"]) == ("lmcache_core", 3, [])
    ms = row["ms"]
    assert 0 < ms["min"] <= ms["median"] <= ms["max"]


def test_table_lists_the_heavy_modules_an_import_loads(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run(capsys, "--runs", "1", "--module", "lmcache_core", "--module", "lmcache_core.hookspecs")
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["import", "median", "ms", "min"]
    core = next(line for line in lines if line.startswith("lmcache_core "))
    hookspecs = next(line for line in lines if line.startswith("lmcache_core.hookspecs "))
    assert core.endswith("none")
    assert hookspecs.endswith("  lmcache_core.hookspecs, pluggy"), hookspecs


def test_a_failing_import_names_the_module(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser({"bench import": COMMANDS["bench import"]})
    args = parser.parse_args(["bench", "import", "--runs", "1", "--module", "lmcache_no_such_module"])
    with pytest.raises(
        CLIError, match=r"(?s)--module: the import of 'lmcache_no_such_module' failed: .*ModuleNotFound"
    ):
        args.run(args)
