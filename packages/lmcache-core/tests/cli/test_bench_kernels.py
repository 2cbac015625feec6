"""``lmcache-core bench kernels``: the whole command as a subprocess (``--quick``), and its parts.

The subprocess runs use ``--quick`` (4 layers, 64-token chunks, a 16 MiB pool), so each takes a
couple of seconds; they check content, not speed: every figure is a positive float with
min <= median <= max, the ratios are the ratios of the medians, and the timed kernels were
verified bit-exact against the reference.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import random
import re
import subprocess
import sys
from typing import Any

import pytest
import torch

from lmcache_core.cli.bench_kernels import MIB, MIN_POOL, POOL_LLC_FACTOR, make_plan
from lmcache_core.cli.bench_pool import (
    PATTERN_PERIOD,
    SHAPES,
    BlockSampler,
    build_pool,
    fill_pattern_,
    flat_bytes,
    quick,
    slot_mapping,
)
from lmcache_core.cli.host import CacheInfo, HostInfo, parse_size
from lmcache_core.cli.memcpy_roof import SEGMENT_ALIGN, Memcpy, plan_gather_like, plan_scatter_like
from lmcache_core.cli.table import format_table
from lmcache_core.cli.timing import Stats, measure_gbps

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
    proc = _bench("--shapes", "vllm_cpu", "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "[vllm_cpu] vllm_cpu, 4 layers x 8 kv heads x 128 bfloat16, block 128" in out
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
    assert "[1/" in proc.stderr and "vllm_cpu gather" in proc.stderr  # progress went to stderr


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
            "--shapes: expected names from ['mla', 'nhd', 'small_rows', 'vllm_cpu']",
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


# ---- parts ----------------------------------------------------------------------------------


def _host(llc_mib: int | None, available_gib: float = 16) -> HostInfo:
    return HostInfo(
        cpu_model="test",
        machine="x86_64",
        system="Linux",
        logical_cpus=2,
        usable_cpus=2,
        mem_total_bytes=32 * 2**30,
        mem_available_bytes=int(available_gib * 2**30),
        llc=None if llc_mib is None else CacheInfo(3, llc_mib * MIB, "test"),
    )


def _args(**kw: Any) -> argparse.Namespace:
    base = {
        "repeats": None,
        "warmup": 1,
        "threads": None,
        "pool_mib": None,
        "shapes": list(SHAPES),
        "quick": False,
        "device": None,
        "seed": 0,
    }
    base.update(kw)
    return argparse.Namespace(**base)


def test_default_pool_is_8x_llc_and_at_least_256_mib() -> None:
    assert make_plan(_args(), _host(480), "cpu").pool_bytes == POOL_LLC_FACTOR * 480 * MIB
    assert make_plan(_args(), _host(8), "cpu").pool_bytes == MIN_POOL
    unknown = make_plan(_args(), _host(None), "cpu")
    assert unknown.pool_bytes == MIN_POOL and any("unknown" in n for n in unknown.notes)


def test_pool_is_capped_by_available_memory_and_says_so() -> None:
    plan = make_plan(_args(), _host(480, available_gib=4), "cpu")
    assert plan.pool_bytes == 2 * 2**30
    assert any("capped" in n for n in plan.notes) and any("under 8x" in n for n in plan.notes)


def test_quick_plan_is_small_and_says_it_is_not_memory_bandwidth() -> None:
    plan = make_plan(_args(quick=True), _host(480), "cpu")
    assert plan.repeats == 3 and plan.pool_bytes == 16 * MIB
    assert all(s.num_layers == 4 and s.num_tokens == 64 for s in plan.shapes)
    assert plan.threads == 2 and plan.device == "cpu"


def test_default_shapes_match_the_documented_cases() -> None:
    nhd, small, mla, cpu = (SHAPES[n] for n in ("nhd", "small_rows", "mla", "vllm_cpu"))
    assert nhd.chunk_bytes == 32 * MIB and nhd.kind == "vllm_flash_nhd" and nhd.block_size == 16
    assert small.row_bytes == 256 and small.kind == "vllm_flash_nhd"
    assert mla.kind == "mla" and mla.num_kv == 1 and mla.row_bytes == 576 * 2
    assert cpu.kind == "vllm_cpu" and cpu.block_size == 128 and cpu.row_bytes == 8 * 128 * 2


def test_pool_pattern_differs_across_blocks_and_layers_and_touches_every_byte() -> None:
    spec = quick(SHAPES["nhd"])
    pool = build_pool(spec, 8, "cpu", seed=1)
    # same block in two layers, and two blocks in one layer, hold different bytes
    assert not torch.equal(pool.tensors[0][0, 3], pool.tensors[1][0, 3])
    assert not torch.equal(pool.tensors[0][0, 3], pool.tensors[0][0, 4])
    # the pattern continues across tensors with period PATTERN_PERIOD bytes
    t = [torch.zeros(PATTERN_PERIOD + 10, dtype=torch.uint8), torch.zeros(100, dtype=torch.uint8)]
    fill_pattern_(t, seed=3)
    assert torch.equal(t[0][PATTERN_PERIOD:], t[0][:10])
    assert torch.equal(t[1][:90], t[0][10:100])


def test_slot_mappings_use_whole_random_blocks_with_consecutive_slots() -> None:
    m = slot_mapping([5, 2], block_size=4, num_tokens=6)
    assert m.tolist() == [20, 21, 22, 23, 8, 9] and m.dtype == torch.int64
    sampler = BlockSampler(10, seed=0)
    drawn = sampler.take(4) + sampler.take(4)
    assert len(set(drawn)) == 8 and not sampler.reused
    sampler.take(4)  # only 2 fresh blocks were left
    assert sampler.reused
    with pytest.raises(ValueError, match="count"):
        sampler.take(11)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_memcpy_roof_moves_the_right_bytes(threads: int) -> None:
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, generator=gen) for _ in range(3)]
    chunk = torch.zeros(300_001, dtype=torch.uint8)
    rng = random.Random(0)
    plan = plan_gather_like(pool, chunk, rng)
    assert sum(d.numel() for d, _ in plan) == chunk.numel()
    for _, src in plan:
        base = next(p for p in pool if p.untyped_storage().data_ptr() == src.untyped_storage().data_ptr())
        assert (src.data_ptr() - base.data_ptr()) % SEGMENT_ALIGN == 0
    memcpy = Memcpy(threads)
    try:
        memcpy.copy(plan)
        assert torch.equal(chunk, torch.cat([src for _, src in plan]))
        chunk.copy_(torch.randint(0, 256, chunk.shape, dtype=torch.uint8, generator=gen))
        back = plan_scatter_like(pool, chunk, rng)
        memcpy.copy(back)
        assert torch.equal(torch.cat([dst for _, dst in back]), chunk)
    finally:
        memcpy.close()
    with pytest.raises(ValueError, match="threads"):
        Memcpy(0)


def test_stats_and_measurement() -> None:
    s = Stats.of([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 3.0, 3)
    assert s.describe() == "2.00 (1.00-3.00)"
    calls: list[int] = []
    stats = measure_gbps(calls.append, lambda: None, nbytes=10**6, repeats=4, warmup=2)
    assert calls == [0, 1, 2, 3, 4, 5] and stats.runs == 4 and stats.min > 0
    with pytest.raises(ValueError, match="repeats"):
        measure_gbps(calls.append, lambda: None, nbytes=1, repeats=0)


def test_parse_size_and_table() -> None:
    assert parse_size("491520K") == 480 * MIB and parse_size("32 MiB") == 32 * MIB and parse_size("64") == 64
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")
    text = format_table(["name", "GB/s"], [["a", "1.50"], ["long name", "12.25"]])
    assert text.splitlines() == [
        "name       GB/s",
        "---------  -----",
        "a           1.50",
        "long name  12.25",
    ]
    with pytest.raises(ValueError, match=r"rows\[0\]"):
        format_table(["a", "b"], [["only one"]])


def test_flat_bytes_refuses_non_contiguous() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        flat_bytes(torch.zeros(4, 4).t())
