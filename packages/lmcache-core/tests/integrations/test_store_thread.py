"""Stores off the engine thread (``store_overlap``): the store thread itself, its CPU pinning,
and the worker's guarantees with it: the next step waits for the last step's stores before its
loads and forward, finished requests are reported only after their stores, the bytes are exact.

Real threads, real CPU affinity (Linux), real KV tensors and CacheEngine; no vLLM."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec
from lmcache_core.integrations.vllm.policy import CostModel
from lmcache_core.integrations.vllm.settings import ConnectorSettings
from lmcache_core.integrations.vllm.stats import StatsRecorder
from lmcache_core.integrations.vllm.store_thread import StoreThread, bound_cpus, node_cpus, pin_to, spare_cpus
from lmcache_core.integrations.vllm.worker import WorkerSide
from lmcache_core.layout_registry import LayoutHints

from .test_worker import BS, CHUNK, STORED, TOKENS, make_kv

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs Linux CPU affinity and at least 2 usable CPUs",
)


def waiting_for(gate: threading.Event) -> Callable[[], None]:
    """A store batch that runs until ``gate`` is set (a slow copy)."""

    def job() -> None:
        gate.wait(10)

    return job


def overlapped_worker(kv: list[torch.Tensor], overlap: str = "on") -> WorkerSide:
    config = CacheEngineConfig(model_id="test", chunk_size=CHUNK, l1_bytes=64 * 2**20, pinned=False)
    w = WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder(), store_overlap=overlap)
    w.register_kv_caches(kv, LayoutHints(kind="vllm_cpu"))
    return w


def test_explicit_omp_bindings_name_the_cpus_of_every_rank() -> None:
    assert bound_cpus("0-3|4-7") == set(range(8))
    assert bound_cpus("0,2,4") == {0, 2, 4}
    assert bound_cpus(" 1 ") == {1}
    for text in ("auto", "nobind", "all", "", None, "0-", "a-b", "1,x"):
        assert bound_cpus(text) == set(), text


def test_numa_nodes_keep_other_ranks_cpus_out(tmp_path: Path) -> None:
    # a two-node host as Linux lists it: automatic binding gives each rank one node
    for node, cpus in (("node0", "0-3,8-11"), ("node1", "4-7,12-15")):
        (tmp_path / node).mkdir()
        (tmp_path / node / "cpulist").write_text(cpus + "\n")
    (tmp_path / "possible").write_text("0-1\n")  # not a node
    assert node_cpus({1}, tmp_path) == {0, 1, 2, 3, 8, 9, 10, 11}
    assert node_cpus({1, 5}, tmp_path) == set(range(16))
    assert node_cpus({99}, tmp_path) is None
    assert node_cpus({0}, tmp_path / "missing") is None
    mine = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
    if mine and mine <= set(range(4)):  # this thread on node 0 of the fake host
        assert spare_cpus(tmp_path) <= {0, 1, 2, 3, 8, 9, 10, 11} - mine


def test_store_thread_runs_batches_in_order_and_join_waits_for_them() -> None:
    t = StoreThread()
    seen: list[tuple[int, str]] = []
    gate = threading.Event()
    try:
        t.submit(waiting_for(gate))
        for i in range(3):
            t.submit(functools.partial(lambda i: seen.append((i, threading.current_thread().name)), i))
        assert t.busy and seen == []
        gate.set()
        t.join()
        assert not t.busy
        assert seen == [(0, "lmcache-store"), (1, "lmcache-store"), (2, "lmcache-store")]
    finally:
        t.close()
    with pytest.raises(RuntimeError, match="store thread: closed"):
        t.submit(lambda: None)


def test_a_failing_batch_is_logged_and_the_thread_keeps_serving(caplog: pytest.LogCaptureFixture) -> None:
    t = StoreThread()
    ran = threading.Event()
    try:
        t.submit(functools.partial(divmod, 1, 0))  # type: ignore[arg-type]
        t.submit(ran.set)
        t.join()
        assert ran.is_set()
        assert "a store batch failed" in caplog.text
    finally:
        t.close()


@needs_affinity
def test_spare_cpus_are_those_outside_the_engine_threads_binding_and_the_store_thread_uses_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    cpus = sorted(os.sched_getaffinity(0))
    got: dict[str, object] = {}

    def engine_thread() -> None:  # as vLLM CPU binds its engine thread to its OpenMP CPUs
        assert pin_to({cpus[0]})
        got["spare"] = spare_cpus()
        t = StoreThread(got["spare"])  # type: ignore[arg-type]
        t.submit(lambda: got.__setitem__("store", os.sched_getaffinity(0)))
        t.join()
        t.close()

    th = threading.Thread(target=engine_thread)
    th.start()
    th.join(30)
    assert cpus[0] not in got["spare"]  # type: ignore[operator]
    assert set(cpus[1:]) <= got["spare"]  # type: ignore[operator]
    assert got["store"] == set(cpus[1:])  # the copy runs where the engine thread does not
    assert not pin_to(set())


def test_next_step_waits_for_the_stores_before_its_loads_and_forward() -> None:
    kv = make_kv()
    w = overlapped_worker(kv)
    src = [3, 17, 9, 40, 22, 31, 8]
    original = [t[src].clone() for t in kv]
    gate = threading.Event()
    try:
        assert w._store_thread is not None
        plan = StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], src, None)], scheduled_tokens=200)
        w.begin_step(plan)
        w._store_thread.submit(waiting_for(gate))  # the copy is slow
        w.save(plan)  # returns without copying
        assert w.stores_in_flight() >= 1
        assert w.get_finished({"r1"}) == set()  # r1's blocks stay held while the copy is pending
        entered = threading.Event()
        began = threading.Event()

        def next_step() -> None:
            entered.set()
            w.begin_step(StepPlan(scheduled_tokens=1))
            began.set()

        th = threading.Thread(target=next_step)
        th.start()
        assert entered.wait(5)
        assert not began.wait(0.3)  # the next step waits for the store ...
        gate.set()
        assert began.wait(10)  # ... and then goes on
        th.join(5)
        for t in kv:
            t[src] = -1.0  # the next forward writes the blocks (e.g. a preempted request's, reused)
        assert w.get_finished(set()) == {"r1"}
        assert w.lookup(TOKENS[:STORED], None)["hit"] == STORED
        dst = [1, 2, 4, 5, 6, 7, 10]
        load = StepPlan(loads=[LoadSpec("r2", TOKENS[:STORED], dst, 0, STORED, None)])
        w.begin_step(load)
        w.load(load)
        for t, o in zip(kv, original, strict=True):  # the bytes from before the overwrite
            assert torch.equal(t[dst[:6]], o[:6])  # 192 tokens: the first 6 blocks
    finally:
        w.close()


def test_store_overlap_off_or_gpu_kv_keeps_stores_in_the_step() -> None:
    w = overlapped_worker(make_kv(), overlap="off")
    try:
        assert w._store_thread is None
    finally:
        w.close()


def test_store_overlap_setting_is_checked() -> None:
    assert ConnectorSettings(engine={}).store_overlap == "auto"
    with pytest.raises(
        ValueError, match=r"store_overlap: expected one of \['auto', 'on', 'off'\], given 'yes'"
    ):
        ConnectorSettings(engine={}, store_overlap="yes")
    config = CacheEngineConfig(model_id="test")
    with pytest.raises(ValueError, match="store_overlap"):
        WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder(), store_overlap="never")


def test_close_runs_what_is_queued_then_stops() -> None:
    t = StoreThread()
    done = threading.Event()

    def slow() -> None:
        time.sleep(0.05)
        done.set()

    t.submit(slow)
    t.close()
    assert done.is_set()


def test_flush_waits_for_the_store_thread_first(tmp_path: Path) -> None:
    kv = make_kv()
    config = CacheEngineConfig(
        model_id="test", chunk_size=CHUNK, l1_bytes=64 * 2**20, pinned=False, l2_urls=(f"fs://{tmp_path}",)
    )
    w = WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder(), store_overlap="on")
    w.register_kv_caches(kv, LayoutHints(kind="vllm_cpu"))
    gate = threading.Event()
    try:
        assert w._store_thread is not None
        plan = StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], [3, 17, 9, 40, 22, 31], None)])
        w.begin_step(plan)
        w._store_thread.submit(waiting_for(gate))
        w.save(plan)
        threading.Timer(0.2, gate.set).start()
        assert w.flush(30.0)  # waits for the slow store, then writes L2
        reader = CacheEngine(config)  # another engine with an empty L1 finds them in L2
        reader.register_kv_caches(make_kv(1), LayoutHints(kind="vllm_cpu"))
        assert reader.lookup(TOKENS[:STORED]).tokens == STORED
        reader.close()
    finally:
        w.close()
