"""``lmcache-core bench kernels``: the whole command as a subprocess (``--quick``).

The subprocess runs use ``--quick`` (4 layers, 64-token chunks, a 16 MiB pool), so each takes a
couple of seconds; they check content, not speed: every figure is a positive float with
min <= median <= max, the ratios are the ratios of the medians, and the timed kernels were
verified bit-exact against the reference. The measuring library is tested in tests/bench/.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from lmcache_core.bench.kernels import MIB
from lmcache_core.bench.pool import SHAPES, quick

_TEST_ENV = (
    "LMCACHE_BACKEND",
    "LMCACHE_TEST_DUMMY",
    "LMCACHE_TEST_DUMMY_TWIN",
    "LMCACHE_TEST_DUMMY_BADAPI",
    "LMCACHE_TEST_DUMMY_NOIMPORT",
)


def _bench(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in _TEST_ENV}
    full_env.update(env)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "lmcache_core.cli.main",
            "bench",
            "kernels",
            "--quick",
            "--device",
            "cpu",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=full_env,
    )


def _check_stats(stats: dict[str, Any], repeats: int) -> None:
    for key in ("median", "min", "max"):
        assert isinstance(stats[key], float) and stats[key] > 0, stats
    assert stats["min"] <= stats["median"] <= stats["max"]
    assert stats["runs"] == repeats


# ---- the command, end to end ----------------------------------------------------------------


def test_json_output_has_every_figure_ratio_and_check() -> None:
    proc = _bench("--json", "--shapes", "nhd", "mla", "--repeats", "2", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command"] == "bench kernels" and doc["torch"] == torch.__version__
    assert doc["threads"] == 1 and doc["torch_threads"] == 1 and doc["repeats"] == 2
    assert doc["memcpy"] == "libc memcpy, 1 thread"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", doc["date"])
    assert doc["host"]["cpu_model"] and doc["quick"] is True and doc["all_verified"] is True
    assert [(r["shape"], r["op"]) for r in doc["results"]] == [
        ("nhd", "gather"),
        ("nhd", "scatter"),
        ("mla", "gather"),
        ("mla", "scatter"),
    ]
    for r in doc["results"]:
        for figure in ("kernel_gbps", "reference_gbps", "memcpy_gbps"):
            _check_stats(r[figure], repeats=2)
        assert r["ratio_kernel_memcpy"] == pytest.approx(
            r["kernel_gbps"]["median"] / r["memcpy_gbps"]["median"]
        )
        assert r["ratio_kernel_reference"] == pytest.approx(
            r["kernel_gbps"]["median"] / r["reference_gbps"]["median"]
        )
        assert r["verified"] is True and r["check"].startswith("bit-exact")
        spec = quick(SHAPES[r["shape"]])
        assert r["chunk_bytes"] == spec.chunk_bytes and r["layout"] == spec.kind
    assert [p["shape"] for p in doc["pools"]] == ["nhd", "mla"]
    assert all(p["pool_bytes"] >= 16 * MIB * 0.9 for p in doc["pools"])


def test_named_reference_backend_is_timed_once_and_reported_as_its_own_reference() -> None:
    proc = _bench("--json", "--backend", "reference", "--shapes", "small_rows", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["backend"] == "reference" and "chosen by name" in doc["selection"]
    for r in doc["results"]:
        assert r["kernel_backend"] == "reference"
        assert r["kernel_gbps"] == r["reference_gbps"] and r["ratio_kernel_reference"] == 1.0
        assert "(the kernel is the reference)" in r["check"]


def test_text_output_table_progress_and_correctness_line() -> None:
    proc = _bench("--shapes", "vllm_cpu_vec", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[vllm_cpu_vec] vllm_cpu, 4 layers x 8 kv heads x 128 bfloat16, block 128" in out
    header = "op       kernel"
    assert header in out and "kern/memcpy" in out and "kern/ref" in out and "bit-exact" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("gather ", "scatter "))]
    assert [r[0] for r in rows] == ["gather", "scatter"]
    for r in rows:
        numbers = [float(x) for x in re.findall(r"\d+\.\d+", " ".join(r[2:]))]
        assert len(numbers) == 11 and all(n > 0 for n in numbers)  # 3 x (median, min, max) + 2 ratios
        assert r[-1] == "yes"
    assert "correctness: the last timed gather and scatter of every shape are bit-exact" in out
    assert "--quick: small shapes and pool" in out
    assert "[1/" in proc.stderr and "vllm_cpu_vec gather" in proc.stderr  # progress went to stderr


def test_no_progress_keeps_stderr_free_of_progress_lines() -> None:
    proc = _bench("--shapes", "mla", "--repeats", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert "[1/" not in proc.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--repeats", "0"), "--repeats: expected an integer >= 1, given 0"),
        (("--threads", "0"), "--threads: expected an integer >= 1, given 0"),
        (
            ("--shapes", "nhd", "huge"),
            "--shapes: expected names from ['hnd', 'mla', 'nhd', 'small_rows', 'vllm_cpu_amx', 'vllm_cpu_vec']",
        ),
        (("--backend", "no_such_backend"), "expected one of ["),
    ],
)
def test_bad_arguments_exit_2_with_the_reason(args: tuple[str, ...], message: str) -> None:
    proc = _bench(*args)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(
    not any(d.metadata["Name"] == "lmcache-dummy-backend" for d in importlib.metadata.distributions()),
    reason="test plugin lmcache-dummy-backend not installed (see tests/plugins/README.md)",
)
def test_dummy_backend_times_its_own_layout_and_falls_back_elsewhere() -> None:
    proc = _bench(
        "--json", "--backend", "dummy", "--shapes", "nhd", "mla", "--repeats", "1", LMCACHE_TEST_DUMMY="1"
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    kernels = {(r["shape"], r["op"]): r["kernel_backend"] for r in doc["results"]}
    assert kernels == {
        ("nhd", "gather"): "dummy",
        ("nhd", "scatter"): "dummy",
        ("mla", "gather"): "reference",
        ("mla", "scatter"): "reference",
    }
    assert doc["all_verified"] is True
    nhd = [r for r in doc["results"] if r["shape"] == "nhd"]
    assert all("(the kernel is the reference)" not in r["check"] for r in nhd)
