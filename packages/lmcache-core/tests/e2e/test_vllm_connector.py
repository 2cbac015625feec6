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


def whole(n: int) -> int:
    return n // BLOCK * BLOCK


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
            idx = _chunk_index(header.key, PROMPTS[2][: whole(LENGTHS[2])], "p3")
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
        "connector": _connector([redis.url]),
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
    assert again["num_cached_tokens"] == whole(LENGTHS[0])  # every whole block of the prompt
    assert_same_output(again, first, "prompt 1 served again from L1")
    m = engine_a["metrics"]["m"]
    assert m["vllm:lmcache_core_l1_matched_tokens"] >= whole(LENGTHS[0])
    assert m["vllm:lmcache_core_loaded_bytes"] > 0
    assert m["vllm:lmcache_core_load_time_seconds:count"] >= 1
    assert m["vllm:external_prefix_cache_hits"] >= whole(LENGTHS[0])
    assert engine_a["results"]["flushed"] is True


def test_b_fresh_engine_loads_the_prefix_from_filesystem_l2(
    engine_a: dict[str, Any], engine_b: dict[str, Any]
) -> None:
    got = engine_b["results"]["p1"][0]
    assert got["num_cached_tokens"] == whole(LENGTHS[0])
    assert_same_output(got, reference(engine_a, 0), "prompt 1 loaded from the filesystem L2 by a new engine")
    assert engine_b["metrics"]["m"]["vllm:lmcache_core_l2_matched_tokens"] >= whole(LENGTHS[0])


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
    assert got["num_cached_tokens"] == whole(LENGTHS[0])
    assert_same_output(got, reference(engine_a, 0), "prompt 1 loaded from Redis")
    assert engine_c["metrics"]["before_stop"]["vllm:lmcache_core_l2_matched_tokens"] >= whole(LENGTHS[0])
    assert res["redis_gone"] is True
    for got, i in zip(res["during_stop"], [3, 4, 1, 2], strict=True):
        assert len(got["tokens"]) == 48
        first8 = {**got, "tokens": got["tokens"][:8], "logprobs": got["logprobs"][:8]}
        assert_same_output(first8, reference(engine_a, i), f"prompt {i + 1} while Redis is being stopped")
    for got, i in zip(res["after_stop"], [5, 3, 5], strict=True):
        assert_same_output(got, reference(engine_a, i), f"prompt {i + 1} after Redis stopped")
    assert res["after_stop"][0]["num_cached_tokens"] == 0  # in Redis only, and Redis is gone
    assert res["after_stop"][1]["num_cached_tokens"] == whole(LENGTHS[3])  # from L1
    assert "unavailable" in engine_c["log"]  # the Redis tier saw the outage


def test_e_zeroed_kv_changes_the_output(
    engine_a: dict[str, Any], engine_b: dict[str, Any], tampered: dict[str, int]
) -> None:
    assert tampered["zeroed"] >= 4
    got, want = engine_b["results"]["p2"][0], reference(engine_a, 1)
    assert got["num_cached_tokens"] == whole(LENGTHS[1])  # the zeros were loaded, not recomputed
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
    assert again["num_cached_tokens"] == whole(LENGTHS[0])
    assert_same_output(again, first, "prompt 1 again with tensor parallel 2")
    assert_same_output(first, reference(engine_a, 0), "prompt 1 with tensor parallel 2 against one worker")
    m = report["metrics"]["m"]
    assert m["vllm:lmcache_core_loaded_tokens"] == 2 * whole(LENGTHS[0])  # each rank loads its heads
    ranks = sorted(decode_header(p.read_bytes()).key.split("|")[2] for p in l2.rglob("*.kv"))
    n = len(ranks) // 2
    assert n >= 4 and ranks == ["tp2.0"] * n + ["tp2.1"] * n
