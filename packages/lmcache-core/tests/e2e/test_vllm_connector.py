"""lmcache-core's connector on real vLLM CPU engines (vLLM's own prefix cache off, greedy).

Three engine processes share the work (engine starts are the cost):

* engine A (scheduler and worker in one process) computes five prompts from scratch (the
  reference outputs), then serves prompt 1 again: (a) it loads from L1 and gives the same tokens
  and logprobs. It writes every chunk to a filesystem L2 and to Redis.
* Between A and B the test rewrites prompt 2's L2 objects with zero KV (valid checksums) and
  corrupts the payload of prompt 3's objects after its first chunk.
* engine B (a fresh process, scheduler and workers in separate processes) reads the filesystem
  L2: (b) prompt 1 loads from L2 with identical output; (e) prompt 2 loads zeros and its output
  changes, so the loaded KV is really used; (c) prompt 3's corrupt chunks fail to load, are
  handed back to vLLM through ``get_block_ids_with_load_errors`` and recomputed: output correct.
* engine C reads Redis: prompt 1 loads from Redis; then (d) Redis is killed while a batch of
  requests runs, and every request still completes with the reference output.
* (f) the chunks engine A stored for prompt 1 are true token rows: K (after RoPE) and V equal
  what transformers computes for the same model and prompt, and they load byte for byte into a
  ``vllm_flash_nhd`` layout of the same model (the chunk does not depend on the paging layout).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import BLOCK, CHUNK, Redis, assert_same_output, prompts, run_engine

pytestmark = pytest.mark.slow

LENGTHS = [300, 280, 330, 260, 310, 270]
SALTS = ["p1", "p2", "p3", "p4", "p5", "p6"]
PROMPTS = prompts(5, LENGTHS)
CONVERSATION = prompts(6, [300, 20])


def cached(n: int) -> int:
    """Prompt tokens vLLM counts as cached when the whole prompt is: all but the last, which it
    computes (chunks hold token rows, so a partial last block is stored too)."""
    return n - 1


def _connector(l2_urls: list[str]) -> dict[str, Any]:
    return {"chunk_size": CHUNK, "l1_bytes": "256M", "l2_urls": l2_urls}


def _gen(name: str, idx: list[int], salts: list[str] | None = None, **kw: Any) -> dict[str, Any]:
    step = {
        "op": "generate",
        "name": name,
        "prompts": [PROMPTS[i] for i in idx],
        "salts": salts if salts is not None else [SALTS[i] for i in idx],
        "max_tokens": 8,
        "logprobs": 5,
    }
    step.update(kw)
    return step


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vllm-e2e")


@pytest.fixture(scope="module")
def redis(workdir: Path):
    server = Redis(workdir / "redis")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def engine_a(tiny_model: Path, workdir: Path, redis: Redis) -> dict[str, Any]:
    spec = {
        "model": str(tiny_model),
        "connector": _connector([f"fs://{workdir / 'l2'}", redis.url]),
        "in_process": True,
        "steps": [
            _gen("first", list(range(len(PROMPTS)))),
            _gen("again", [0]),
            # store_generated: turn 2 (turn 1, its 70-token reply, 20 new tokens) hits on the
            # reply too: 300 + 70 - 1 tokens have KV, 320 of them in whole chunks.
            {
                "op": "chat",
                "name": "conv",
                "conversations": [CONVERSATION],
                "answer_tokens": 70,
                "salts": ["conv"],
            },
            {"op": "flush", "name": "flushed"},
            {"op": "metrics", "name": "m"},
        ],
    }
    return run_engine(spec, workdir, "engine_a")


def _objects(l2: Path) -> list[tuple[Path, Any]]:
    from lmcache_core.storage.object_format import decode_header

    out = []
    for path in sorted(l2.rglob("*.kv")):
        data = path.read_bytes()
        out.append((path, decode_header(data)))
    return out


def _chunk_index(key: str, tokens: list[int], salt: str) -> int | None:
    from lmcache_core.tokens import TokenChunker

    hashes = [h.hex() for _, _, h in TokenChunker(CHUNK).prefix_hashes(tokens, salt)]
    suffix = key.rsplit("|", 1)[-1]
    return hashes.index(suffix) if suffix in hashes else None


@pytest.fixture(scope="module")
def tampered(engine_a: dict[str, Any], workdir: Path) -> dict[str, int]:
    """Prompt 2's objects rewritten with zero KV; prompt 3's corrupted from its second chunk on."""
    from lmcache_core.keys import salt_tag
    from lmcache_core.storage.object_format import encode_object

    zeroed = corrupted = 0
    for path, header in _objects(workdir / "l2"):
        salt = header.key.split("|")[3]
        if salt == salt_tag("p2"):
            path.write_bytes(encode_object(header.key, header.meta, bytes(header.payload_len)))
            zeroed += 1
        elif salt == salt_tag("p3"):
            idx = _chunk_index(header.key, PROMPTS[2], "p3")
            if idx is not None and idx >= 1:
                data = bytearray(path.read_bytes())
                data[header.header_len + 17] ^= 0xFF
                path.write_bytes(bytes(data))
                corrupted += 1
    return {"zeroed": zeroed, "corrupted": corrupted}


@pytest.fixture(scope="module")
def engine_b(tiny_model: Path, workdir: Path, tampered: dict[str, int]) -> dict[str, Any]:
    spec = {
        "model": str(tiny_model),
        "connector": _connector([f"fs://{workdir / 'l2'}"]),
        "steps": [_gen("p1", [0]), _gen("p2", [1]), _gen("p3", [2]), {"op": "metrics", "name": "m"}],
    }
    return run_engine(spec, workdir, "engine_b")


@pytest.fixture(scope="module")
def engine_c(tiny_model: Path, workdir: Path, redis: Redis, engine_a: dict[str, Any]) -> dict[str, Any]:
    spec = {
        "model": str(tiny_model),
        "connector": {**_connector([redis.url]), "load_async": "never"},  # synchronous loads
        "llm": {"max_num_seqs": 1},
        "steps": [
            _gen("from_redis", [0]),
            {"op": "metrics", "name": "before_stop"},
            # Redis is killed 0.3 s into this batch; requests run one at a time (max_num_seqs=1)
            # and generate 48 tokens each, so some are looked up and loaded before the kill and
            # some after, while the L2 tier goes away.
            _gen("during_stop", [3, 4, 1, 2], max_tokens=48, stop_pid_after_s=[redis.proc.pid, 0.3]),
            {"op": "wait_port_closed", "name": "redis_gone", "port": redis.port},
            # Redis is down now: prompt 6 (only in Redis) is a miss; prompt 4 from L1; a new tenant.
            _gen("after_stop", [5, 3, 5], salts=["p6", "p4", "p6-other-tenant"]),
            {"op": "metrics", "name": "m"},
        ],
    }
    return run_engine(spec, workdir, "engine_c")


def reference(engine_a: dict[str, Any], i: int) -> dict[str, Any]:
    return engine_a["results"]["first"][i]


def test_a_same_engine_loads_the_prefix_from_l1(engine_a: dict[str, Any]) -> None:
    first, again = reference(engine_a, 0), engine_a["results"]["again"][0]
    assert first["num_cached_tokens"] == 0
    assert again["num_cached_tokens"] == cached(LENGTHS[0])  # the whole prompt, partial block too
    assert_same_output(again, first, "prompt 1 served again from L1")
    m = engine_a["metrics"]["m"]
    assert m["vllm:lmcache_core_l1_matched_tokens"] >= cached(LENGTHS[0])
    assert m["vllm:lmcache_core_loaded_bytes"] > 0
    assert m["vllm:lmcache_core_load_time_seconds:count"] >= 1
    assert m["vllm:external_prefix_cache_hits"] >= cached(LENGTHS[0])
    assert engine_a["results"]["flushed"] is True


def test_b_fresh_engine_loads_the_prefix_from_filesystem_l2(
    engine_a: dict[str, Any], engine_b: dict[str, Any]
) -> None:
    got = engine_b["results"]["p1"][0]
    assert got["num_cached_tokens"] == cached(LENGTHS[0])
    assert_same_output(got, reference(engine_a, 0), "prompt 1 loaded from the filesystem L2 by a new engine")
    assert engine_b["metrics"]["m"]["vllm:lmcache_core_l2_matched_tokens"] >= cached(LENGTHS[0])
    # Issue 16.1: loads from L2 ran off the step (load_async "l2"), one per prompt
    assert engine_b["metrics"]["m"]["vllm:lmcache_core_async_loads"] == 3


def test_generated_tokens_are_cached_for_the_next_turn(engine_a: dict[str, Any]) -> None:
    """Issue 16.3: the reply of turn 1 completed chunk 4 (tokens 256..319): turn 2 loads it."""
    turn1, turn2 = engine_a["results"]["conv"][0]
    assert turn1["num_cached_tokens"] == 0
    assert turn2["num_cached_tokens"] == 320  # prompt-only storing would give 256


def test_c_corrupt_l2_object_is_recomputed(
    engine_a: dict[str, Any], engine_b: dict[str, Any], tampered: dict[str, int]
) -> None:
    assert tampered["corrupted"] >= 2
    got = engine_b["results"]["p3"][0]
    assert_same_output(got, reference(engine_a, 2), "prompt 3 with corrupt L2 chunks")
    m = engine_b["metrics"]["m"]
    assert m["vllm:lmcache_core_load_failed_blocks"] >= 2
    assert "handed back to vLLM to recompute" in engine_b["log"]


def test_d_redis_stopped_mid_run_requests_complete(
    engine_a: dict[str, Any], engine_c: dict[str, Any]
) -> None:
    res = engine_c["results"]
    got = res["from_redis"][0]
    assert got["num_cached_tokens"] == cached(LENGTHS[0])
    assert_same_output(got, reference(engine_a, 0), "prompt 1 loaded from Redis")
    assert engine_c["metrics"]["before_stop"]["vllm:lmcache_core_l2_matched_tokens"] >= cached(LENGTHS[0])
    assert res["redis_gone"] is True
    assert engine_c["metrics"]["m"]["vllm:lmcache_core_async_loads"] == 0  # load_async "never"
    for got, i in zip(res["during_stop"], [3, 4, 1, 2], strict=True):
        assert len(got["tokens"]) == 48
        first8 = {**got, "tokens": got["tokens"][:8], "logprobs": got["logprobs"][:8]}
        assert_same_output(first8, reference(engine_a, i), f"prompt {i + 1} while Redis is being stopped")
    for got, i in zip(res["after_stop"], [5, 3, 5], strict=True):
        assert_same_output(got, reference(engine_a, i), f"prompt {i + 1} after Redis stopped")
    assert res["after_stop"][0]["num_cached_tokens"] == 0  # in Redis only, and Redis is gone
    assert res["after_stop"][1]["num_cached_tokens"] == cached(LENGTHS[3])  # from L1
    assert "unavailable" in engine_c["log"]  # the Redis tier saw the outage


def test_e_zeroed_kv_changes_the_output(
    engine_a: dict[str, Any], engine_b: dict[str, Any], tampered: dict[str, int]
) -> None:
    assert tampered["zeroed"] >= 4
    got, want = engine_b["results"]["p2"][0], reference(engine_a, 1)
    assert got["num_cached_tokens"] == cached(LENGTHS[1])  # the zeros were loaded, not recomputed
    first_pos = {
        t: abs(got["logprobs"][0][t] - want["logprobs"][0][t])
        for t in set(got["logprobs"][0]) & set(want["logprobs"][0])
    }
    assert got["tokens"] != want["tokens"], "zero KV loaded but the output did not change"
    assert not first_pos or max(first_pos.values()) > 1e-2


def test_tensor_parallel_ranks_store_and_load_their_own_chunks(
    tiny_model: Path, workdir: Path, engine_a: dict[str, Any]
) -> None:
    """Two tensor-parallel workers (one KV head each): every chunk key carries its rank, the
    scheduler asks both ranks, and both load their half of the KV."""
    import os

    from lmcache_core.storage.object_format import decode_header

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallel 2 on vLLM CPU needs 2 cores (one OpenMP thread per rank)")
    l2 = workdir / "l2-tp2"
    spec = {
        "model": str(tiny_model),
        "connector": _connector([f"fs://{l2}"]),
        "llm": {"tensor_parallel_size": 2},
        "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"},
        "steps": [_gen("first", [0]), _gen("again", [0]), {"op": "metrics", "name": "m"}],
    }
    report = run_engine(spec, workdir, "engine_tp2")
    first, again = report["results"]["first"][0], report["results"]["again"][0]
    assert again["num_cached_tokens"] == cached(LENGTHS[0])
    assert_same_output(again, first, "prompt 1 again with tensor parallel 2")
    assert_same_output(first, reference(engine_a, 0), "prompt 1 with tensor parallel 2 against one worker")
    m = report["metrics"]["m"]
    assert m["vllm:lmcache_core_loaded_tokens"] == 2 * LENGTHS[0]  # each rank loads its heads
    ranks = sorted(decode_header(p.read_bytes()).key.split("|")[2] for p in l2.rglob("*.kv"))
    n = len(ranks) // 2
    assert n >= 4 and ranks == ["tp2.0"] * n + ["tp2.1"] * n


def _stored_chunks(l2: Path, tokens: list[int], salt: str) -> list[Any]:
    """The chunks of ``tokens`` stored under ``salt`` in the filesystem L2, in prompt order, each
    ``[2 (K, V), num_layers, chunk tokens, hidden]`` float32 (the object's payload, as stored)."""
    import numpy as np
    import torch

    from lmcache_core.keys import salt_tag
    from lmcache_core.storage.object_format import split_object

    found: dict[int, Any] = {}
    for path in sorted(l2.rglob("*.kv")):
        header, payload = split_object(path.read_bytes())
        if header.key.split("|")[3] != salt_tag(salt):
            continue
        idx = _chunk_index(header.key, tokens, salt)
        if idx is not None:
            rows = np.frombuffer(payload, dtype=np.float32).copy()
            found[idx] = torch.from_numpy(rows).view(header.meta.shape)
    return [found[i] for i in sorted(found)]


def test_f_cpu_chunks_are_the_token_rows_transformers_computes_and_load_into_flash(
    tiny_model: Path, workdir: Path, engine_a: dict[str, Any]
) -> None:
    """Issue 12.2, the proof: vLLM CPU's chunks hold K after RoPE and V as token rows."""
    import torch
    from transformers import LlamaForCausalLM

    from lmcache_core.backend import reference_backend
    from lmcache_core.cache_engine import CacheEngine
    from lmcache_core.config import CacheEngineConfig
    from lmcache_core.integrations.vllm.plan import slot_mapping
    from lmcache_core.layout_registry import allocate_example

    prompt, n = PROMPTS[0], LENGTHS[0]
    chunks = _stored_chunks(workdir / "l2", prompt, SALTS[0])
    assert [c.shape[2] for c in chunks] == [CHUNK] * (n // CHUNK) + [n % CHUNK]  # the partial chunk too
    chunk = torch.cat(chunks, dim=2)  # [2, num_layers, n, hidden]

    model = LlamaForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    with torch.no_grad():
        out = model(torch.tensor([prompt]), use_cache=True)
    layers, heads, head_size = model.config.num_hidden_layers, model.config.num_key_value_heads, 64
    assert chunk.shape == (2, layers, n, heads * head_size)
    for layer in range(layers):
        cache = out.past_key_values.layers[layer]  # keys after RoPE, values: [1, heads, n, head_size]
        for kv, want in ((0, cache.keys), (1, cache.values)):
            rows = want[0].permute(1, 0, 2).reshape(n, heads * head_size)
            torch.testing.assert_close(chunk[kv, layer], rows, rtol=1e-3, atol=1e-4 * float(rows.abs().max()))

    # The same chunks load into a flash NHD layout of the same model (same keys, same bytes).
    config = CacheEngineConfig(
        model_id=str(tiny_model), chunk_size=CHUNK, l1_bytes=64 * 2**20, pinned=False,
        l2_urls=(f"fs://{workdir / 'l2'}",),
    )  # fmt: skip
    kv, hints = allocate_example(
        "vllm_flash_nhd", num_layers=layers, num_blocks=12, block_size=BLOCK, num_kv_heads=heads,
        head_size=head_size, dtype=torch.float32,
    )  # fmt: skip
    for t in kv:
        t.fill_(float("nan"))
    blocks = [7, 2, 9, 0, 5, 11, 3, 8, 1, 4]
    slots = torch.from_numpy(slot_mapping(blocks, n, BLOCK))
    engine = CacheEngine(config, backend=reference_backend(), layout_hints=hints)
    try:
        engine.register_kv_caches(kv)
        assert engine.lookup(prompt, cache_salt=SALTS[0]).tokens == n
        assert engine.retrieve(prompt, kv, slots, cache_salt=SALTS[0]).tokens == n
    finally:
        engine.close()
    for layer, t in enumerate(kv):
        for k in range(2):
            got = t[k].reshape(-1, heads * head_size)[slots]  # [n, hidden] in token order
            assert torch.equal(got.view(torch.int32), chunk[k, layer].view(torch.int32))
