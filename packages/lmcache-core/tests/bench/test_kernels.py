"""The kernel bench as a library: the plan from keyword arguments, a run's report and progress."""

from __future__ import annotations

import json

import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.bench.host import CacheInfo, HostInfo
from lmcache_core.bench.kernels import MIB, MIN_POOL, POOL_LLC_FACTOR, STEPS_PER_SHAPE, make_plan, run
from lmcache_core.bench.pool import SHAPES, quick


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


def test_default_pool_is_8x_llc_and_at_least_256_mib() -> None:
    assert make_plan(host=_host(480), device="cpu").pool_bytes == POOL_LLC_FACTOR * 480 * MIB
    assert make_plan(host=_host(8), device="cpu").pool_bytes == MIN_POOL
    unknown = make_plan(host=_host(None), device="cpu")
    assert unknown.pool_bytes == MIN_POOL and any("unknown" in n for n in unknown.notes)


def test_pool_is_capped_by_available_memory_and_says_so() -> None:
    plan = make_plan(host=_host(480, available_gib=4), device="cpu")
    assert plan.pool_bytes == 2 * 2**30
    assert any("capped" in n for n in plan.notes) and any("under 8x" in n for n in plan.notes)


def test_quick_plan_is_small_and_defaults_follow_the_host() -> None:
    plan = make_plan(host=_host(480), device="cpu", quick=True)
    assert plan.repeats == 3 and plan.pool_bytes == 16 * MIB and plan.warmup == 1 and plan.seed == 0
    assert [s.name for s in plan.shapes] == list(SHAPES)
    assert all(s.num_layers == 4 and s.num_tokens == 64 for s in plan.shapes)
    assert plan.threads == 2 and plan.device == "cpu" and plan.quick
    explicit = make_plan(host=_host(480), device="cpu", shapes=["mla"], repeats=5, threads=1, pool_mib=32)
    assert [s.name for s in explicit.shapes] == ["mla"] and explicit.shapes[0] == SHAPES["mla"]
    assert (explicit.repeats, explicit.threads, explicit.pool_bytes) == (5, 1, 32 * MIB)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeats": 0}, "repeats: expected an integer >= 1, given 0"),
        ({"warmup": -1}, "warmup: expected an integer >= 0, given -1"),
        ({"threads": True}, "threads: expected an integer >= 1, given True"),
        ({"pool_mib": 0}, "pool_mib: expected an integer >= 1, given 0"),
        (
            {"shapes": ["nhd", "huge"]},
            "shapes: expected names from ['hnd', 'mla', 'nhd', 'small_rows', 'vllm_cpu_amx', 'vllm_cpu_vec']",
        ),
    ],
)
def test_bad_keywords_raise_value_error_naming_them(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError) as info:
        make_plan(host=_host(480), device="cpu", **kwargs)  # type: ignore[arg-type]
    assert str(info.value).startswith(message)


CHECKS = {
    "gather": "gathered chunk vs the reference gather",
    "scatter": "scattered KV read back by the reference gather vs the source chunk",
}


class RecordingProgress:
    """A ProgressSink that keeps what it was told."""

    def __init__(self) -> None:
        self.total = 0
        self.phases: list[str] = []
        self.updates = 0
        self.notes: list[str] = []

    def begin(self, total: int) -> None:
        self.total = total

    def phase(self, text: str) -> None:
        self.phases.append(text)

    def update(self, detail: str) -> None:
        self.updates += 1

    def skip(self) -> None:
        self.total -= 1

    def note(self, text: str) -> None:
        self.notes.append(text)


def test_run_reports_every_figure_checks_the_bytes_and_counts_its_steps() -> None:
    plan = make_plan(host=_host(None), device="cpu", shapes=["nhd", "mla"], repeats=2, threads=1, quick=True)
    progress = RecordingProgress()
    report = run(plan, reference_backend(), selection="test", progress=progress)
    assert report.all_verified and report.backend == "reference" and report.selection == "test"
    assert [(r.spec.name, r.op) for r in report.results] == [
        ("nhd", "gather"),
        ("nhd", "scatter"),
        ("mla", "gather"),
        ("mla", "scatter"),
    ]
    for r in report.results:
        assert r.spec == quick(SHAPES[r.spec.name]) and r.kernel_backend == "reference"
        assert r.reference == r.kernel  # the kernel is the reference: timed once
        what = CHECKS[r.op]
        assert r.check == f"bit-exact: {what} (the kernel is the reference)"
        for stats in (r.kernel, r.memcpy):
            assert stats.runs == 2 and 0 < stats.min <= stats.median <= stats.max
    assert [p.shape for p in report.pools] == ["nhd", "mla"]
    assert all(p.pool_bytes >= 16 * MIB * 0.9 and p.chunk_ring == 2 for p in report.pools)
    # 9 steps per shape, one reference figure fewer per op since the kernel is the reference
    assert progress.total == len(progress.phases) == 2 * (STEPS_PER_SHAPE - 2)
    assert progress.phases[0].startswith("nhd: allocating") and progress.updates == 2 * 2 * 2 * 3
    assert report.notes[-1].startswith("--quick: small shapes and pool")
    doc = json.loads(json.dumps(report.to_json()))
    assert doc["command"] == "bench kernels" and doc["torch"] == torch.__version__
    assert doc["all_verified"] is True and doc["threads"] == doc["torch_threads"] == 1
    assert doc["host"]["cpu_model"] == "test" and len(doc["results"]) == 4
