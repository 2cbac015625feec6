"""The user-facing commands on real vLLM engines, at small sizes: ``lmcache-core demo`` (three
engine processes) and ``lmcache-core bench e2e`` (one)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-m", "lmcache_core.cli.main"]


def test_demo_runs_the_chat_on_three_engines_and_plots(tmp_path: Path) -> None:
    args = ["demo", "--conversations", "1", "--turns", "3", "--system-tokens", "128", "--turn-tokens", "96",
            "--answer-tokens", "8", "--layers", "2", "--hidden", "256", "--chunk-size", "64",
            "--home", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "every answer identical across the three engines: yes" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert [r[1] for r in rows] == ["1", "2", "3"]
    assert [int(r[2]) for r in rows] == [224, 328, 432]  # history grows by user turn + answer
    # vLLM's prefix cache is on in every engine: one chat fits its KV, so plain vLLM keeps its
    # history (all but the last reply token, whole blocks of 32); lmcache-core adds nothing there
    assert [int(r[6]) for r in rows] == [0, 224, 320]  # plain vLLM's own hits
    assert [int(r[7]) for r in rows] == [0, 224, 320]
    assert [int(r[9]) for r in rows] == [223, 327, 431]  # the replay loads all but each prompt's last token
    assert proc.stderr.count("CPU binding: VLLM_CPU_OMP_THREADS_BIND=") == 3  # each engine's, logged
    assert "(engines take minutes to start here)" in proc.stderr  # a progress line while it starts
    png = tmp_path / "demo" / "ttft_per_turn.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_e2e_hit_matches_miss(tmp_path: Path) -> None:
    args = ["bench", "e2e", "--prompt-tokens", "512", "--repeats", "1", "--layers", "2", "--hidden", "256",
            "--block-size", "32", "--chunk-size", "64", "--cache-dir", str(tmp_path), "--json"]  # fmt: skip
    proc = subprocess.run(CLI + args, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    doc = json.loads(proc.stdout)
    (row,) = doc["rows"]
    assert row["hit_cached_tokens"] == 511 and row["identical_tokens"] and row["max_logprob_diff"] <= 1e-3
    assert doc["outputs_identical"] and doc["kv_bytes_per_token"] == 2048
    assert doc["median_hit_ttft_s"] > 0 and doc["median_miss_ttft_s"] > 0  # hit vs miss: a benchmark figure
    assert doc["connector_metrics"]["lmcache_core_l1_matched_tokens"] >= 511
