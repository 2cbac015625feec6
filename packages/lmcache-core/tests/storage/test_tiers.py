"""The CacheEngine with L2 tiers: write-behind, lookup and prefetch, stacking, faults."""

import os
import time
from pathlib import Path

import pytest
import torch

from lmcache_core import CacheEngine, CacheEngineConfig
from lmcache_core.backend import reference_backend
from lmcache_core.layout_registry import allocate_example

SHAPE = {"num_layers": 2, "num_blocks": 64, "num_kv_heads": 2, "head_size": 8, "block_size": 8}
CHUNK = 16
CHUNK_BYTES = 2 * 2 * CHUNK * 16 * 2  # [2, layers, 16 tokens, hidden 16] fp16


def pool(fill=True, seed=0):
    kv, hints = allocate_example("vllm_flash_nhd", dtype=torch.float16, **SHAPE)
    g = torch.Generator().manual_seed(seed)
    for t in kv:
        t.copy_(torch.randn(t.shape, generator=g) if fill else torch.zeros(t.shape))
    return kv, hints


def slots(num_tokens, seed):
    g = torch.Generator().manual_seed(seed)
    bs, nb = SHAPE["block_size"], SHAPE["num_blocks"]
    blocks = torch.randperm(nb, generator=g)[: (num_tokens + bs - 1) // bs]
    return (blocks[:, None] * bs + torch.arange(bs)).flatten()[:num_tokens].to(torch.int64)


def rows(engine, kv, sm):
    layout = engine.spec.groups[0]
    out = torch.zeros(layout.chunk_format.shape(len(sm)), dtype=torch.float16)
    reference_backend().gather(layout, kv, sm, out)
    return out.view(torch.int16)


def engine(urls, **over):
    cfg = {"chunk_size": CHUNK, "l1_bytes": 64 * CHUNK_BYTES, "l2_urls": urls, **over}
    return CacheEngine(CacheEngineConfig(**cfg), layout_hints=pool(fill=False)[1])


def test_write_behind_then_a_fresh_engine_loads_from_l2(tmp_path):
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(5000, 5100))  # 6 full chunks and a partial one
    s_src, s_dst = slots(100, 1), slots(100, 2)
    with engine(f"fs://{tmp_path}") as e1:
        e1.register_kv_caches(src, hints)
        assert e1.store(tokens, src, s_src).tokens == 100  # returns once in L1
        assert e1.flush(10)
        snap = e1.l2_stats()[0]
        assert snap["store_ok"] == 7 and snap["write_queued"] == 7 and snap.gauges["write_queue_items"] == 0
        assert e1.l1_stats().entries == 7
    with engine(f"fs://{tmp_path}") as e2:  # another engine instance: L1 empty
        e2.register_kv_caches(dst, hints)
        assert e2.lookup(tokens).tokens == 100 and e2.stats.lookup_l2_hit_tokens == 100
        assert e2.lookup(tokens[:40] + [1] * 10).tokens == 32  # prefix semantics hold across tiers
        assert e2.retrieve(tokens, dst, s_dst).tokens == 100
        assert torch.equal(rows(e2, src, s_src), rows(e2, dst, s_dst))
        snap = e2.l2_stats()[0]
        assert snap["prefetch_issued"] == 7 and snap["load_hits"] == 7 and snap["load_corrupt"] == 0


def test_retrieve_without_lookup_loads_what_l1_lacks(tmp_path):
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(64))
    with engine(f"fs://{tmp_path}") as e1:
        e1.store(tokens, src, slots(64, 3))
    with engine(f"fs://{tmp_path}", l2_prefetch=False) as e2:
        e2.register_kv_caches(dst, hints)
        assert e2.retrieve(tokens, dst, slots(64, 4), skip_leading_tokens=20).tokens == 44
        assert torch.equal(rows(e2, src, slots(64, 3))[:, :, 20:], rows(e2, dst, slots(64, 4))[:, :, 20:])


def test_corrupt_chunk_stops_retrieve_and_never_reaches_kv(tmp_path):
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(64))
    with engine(f"fs://{tmp_path}?checksum=crc32") as e1:
        e1.store(tokens, src, slots(64, 5))
        victim = e1._tiers.adapters[0].path_of(str(e1._keys(tokens, None)[1][2][2]))  # chunk 2's file
    raw = bytearray(Path(victim).read_bytes())
    raw[-3] ^= 0x10
    Path(victim).write_bytes(raw)
    with engine(f"fs://{tmp_path}?checksum=crc32") as e2:
        e2.register_kv_caches(dst, hints)
        assert e2.lookup(tokens).tokens == 64  # existence only: the damage is found on load
        s_dst = slots(64, 6)
        assert e2.retrieve(tokens, dst, s_dst).tokens == 32  # stops at the damaged chunk
        got = rows(e2, dst, s_dst)
        assert torch.equal(got[:, :, :32], rows(e2, src, slots(64, 5))[:, :, :32])
        assert not got[:, :, 32:].any()  # nothing of the bad chunk (or after it) was written
        assert e2.l2_stats()[0]["load_corrupt"] == 1 and e2.stats.retrieve_misses == 1
        assert not Path(victim).exists()
        assert e2.lookup(tokens).tokens == 32


def test_stacked_tiers_take_each_chunk_from_the_first_that_has_it(tmp_path, redis_server):
    src, hints = pool()
    dst, _ = pool(fill=False)
    near, far = f"fs://{tmp_path}", f"{redis_server.url}?prefix=stack:"
    tokens = list(range(300, 380))
    with engine([near, far]) as e1:
        e1.store(tokens, src, slots(80, 7))
        assert e1.flush(5)
        assert [s["store_ok"] for s in e1.l2_stats()] == [5, 5]  # every tier gets every chunk
        names = [str(k) for _, _, k in e1._keys(tokens, None)[1]]
        e1._tiers.adapters[0].delete(names[2:])  # the near tier lost chunks 2..4
    with engine([near, far]) as e2:
        e2.register_kv_caches(dst, hints)
        assert e2.lookup(tokens).tokens == 80
        assert e2.retrieve(tokens, dst, slots(80, 8)).tokens == 80
        assert torch.equal(rows(e2, src, slots(80, 7)), rows(e2, dst, slots(80, 8)))
        fs, rd = e2.l2_stats()
        assert fs["load_hits"] == 2 and rd["load_hits"] == 3 and rd["lookup_hits"] == 3


def test_full_queue_drops_and_l1_never_evicts_queued_chunks(own_redis):
    """Redis hangs (SIGSTOP): writes pile up in the bounded queue; once it is full further
    stores are dropped from L2 (counted) without blocking; L1 evicts only chunks not queued;
    when Redis resumes every queued chunk reaches it."""
    src, hints = pool()
    url = f"{own_redis.url}?socket_timeout=20"
    cfg = {"l1_bytes": 12 * CHUNK_BYTES, "l2_queue_items": 4, "l2_queue_bytes": 8 * CHUNK_BYTES,
           "l2_batch": 1, "l2_workers": 1}  # fmt: skip
    with engine(url, **cfg) as e:
        e.register_kv_caches(src, hints)
        e.store(list(range(16)), src, slots(16, 9))
        assert e.flush(5)
        own_redis.pause()
        try:
            prompts = [list(range(1000 * p, 1000 * p + 16)) for p in range(1, 20)]
            t0 = time.perf_counter()
            e.store(prompts[0], src, slots(16, 9))
            deadline = time.monotonic() + 5
            while e.l2_stats()[0].gauges["write_in_flight"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)  # the worker has taken it and hangs on the paused server
            for p in prompts[1:]:
                assert e.store(p, src, slots(16, 9)).tokens == 16
            assert time.perf_counter() - t0 < 5  # never waited for the hung server
            snap = e.l2_stats()[0]
            # one chunk in the worker's hands, four queued, the rest dropped
            assert snap["write_queued"] == 1 + 5 and snap["write_dropped"] == 19 - 5
            assert snap.gauges["write_queue_items"] == 4 and e.stats.l2_write_dropped == 14
            st = e.l1_stats()
            assert st.evictions > 0 and st.used_bytes <= 12 * CHUNK_BYTES
            keys = [e._keys(p, None)[1][0][2] for p in prompts]
            assert all(k in e._l1 for k in keys[:5])  # queued chunks were never evicted
            assert not all(k in e._l1 for k in keys[5:])  # others were, while they waited
        finally:
            own_redis.resume()
        assert e.flush(20)
        import redis

        assert redis.Redis(port=own_redis.port).dbsize() == 1 + 5
        assert e.l2_stats()[0]["store_ok"] == 6


def test_redis_down_engine_serves_l1_and_recovers(own_redis):
    src, hints = pool()
    dst, _ = pool(fill=False)
    url = f"{own_redis.url}?retry_min=0.1&retry_max=0.2&connect_timeout=0.5&socket_timeout=1"
    with engine(url) as e:
        e.register_kv_caches(src, hints)
        a, b = list(range(32)), list(range(500, 532))
        e.store(a, src, slots(32, 10))
        assert e.flush(5)
        own_redis.stop()
        assert e.store(b, src, slots(32, 11)).tokens == 32  # L1 takes it; the tier write fails quietly
        assert e.flush(5)
        assert e.lookup(b).tokens == 32 and e.lookup(list(range(900, 932))).tokens == 0  # a miss: recompute
        assert e.retrieve(b, dst, slots(32, 12)).tokens == 32
        assert torch.equal(rows(e, src, slots(32, 11)), rows(e, dst, slots(32, 12)))
        snap = e.l2_stats()[0]
        assert snap["unavailable_events"] == 1 and snap["unavailable_skips"] >= 2
        own_redis.start()
        time.sleep(0.25)
        e.store(list(range(700, 732)), src, slots(32, 13))
        assert e.flush(5)
        deadline = time.monotonic() + 5
        while e.l2_stats()[0]["reconnects"] == 0 and time.monotonic() < deadline:
            e.lookup(list(range(800, 816)))
            time.sleep(0.05)
        assert e.l2_stats()[0]["reconnects"] == 1
        e.store(list(range(600, 632)), src, slots(32, 14))
        assert e.flush(5)
        import redis

        assert redis.Redis(port=own_redis.port).dbsize() >= 2


def test_disk_full_costs_l2_copies_only(tiny_tmpfs, caplog):
    src, hints = pool()
    dst, _ = pool(fill=False)
    prompts = [
        list(range(10_000 * p, 10_000 * p + 256)) for p in range(20)
    ]  # 320 files of 4 KiB blocks > 1 MiB
    with engine(f"fs://{tiny_tmpfs}", l1_bytes=4 << 20) as e:
        e.register_kv_caches(src, hints)
        for p in prompts:
            assert e.store(p, src, slots(256, 16)).tokens == 256
        assert e.flush(20)
        snap = e.l2_stats()[0]
        assert snap["store_ok"] > 0 and snap["store_failed"] > 0
        assert snap.failures_by_reason == {"store:ENOSPC": snap["store_failed"]}
        assert snap["store_ok"] + snap["store_failed"] == 320 and e.l2_stats()[0].gauges["available"] == 1.0
        assert all(e.lookup(p).tokens == 256 for p in prompts)  # L1 still has everything
        assert e.retrieve(prompts[-1], dst, slots(256, 17)).tokens == 256
        assert torch.equal(rows(e, src, slots(256, 16)), rows(e, dst, slots(256, 17)))
    assert len([r for r in caplog.records if "ENOSPC" in r.getMessage()]) == 1


def test_prometheus_export(tmp_path):
    prometheus_client = pytest.importorskip("prometheus_client")
    src, _ = pool()
    registry = prometheus_client.CollectorRegistry()
    with engine(f"fs://{tmp_path}") as e:
        e.register_prometheus(registry)
        e.store(list(range(48)), src, slots(48, 15))
        e.flush(5)
        text = prometheus_client.generate_latest(registry).decode()
    tier = f'tier="fs://{tmp_path}"'
    assert f"lmcache_l2_store_ok_total{{{tier}}} 3.0" in text
    assert f"lmcache_l2_store_bytes_total{{{tier}}} {3.0 * CHUNK_BYTES}" in text
    assert f'lmcache_l2_latency_seconds_count{{op="store",{tier}}} 3.0' in text
    assert f"lmcache_l2_write_queue_items{{{tier}}} 0.0" in text
    assert f"lmcache_l2_available{{{tier}}} 1.0" in text


def test_l1_commit_pins_and_keeps_a_copy_in_use():
    from lmcache_core.memory.l1_pool import L1Pool

    l1 = L1Pool(4 * 1024, lambda n: torch.zeros(n, dtype=torch.uint8))
    first = l1.commit("k", l1.reserve(1024), 16, pins=2)  # pinned for two L2 writers
    assert first.pins == 2
    assert l1.reserve(4 * 1024) is None  # a pinned chunk is never evicted
    racing = l1.commit("k", l1.reserve(1024), 16, pins=1)  # a second copy while the first is in use
    assert racing is first and first.pins == 3  # the copy in use stays; the new buffer is recycled
    for _ in range(3):
        l1.unpin(first)
    assert l1.reserve(4 * 1024) is not None  # now it can go
    with pytest.raises(ValueError, match="pins: expected a non-negative int"):
        l1.commit("x", torch.zeros(8, dtype=torch.uint8), 1, pins=-1)


# ---- hung tiers, degraded set-up ----------------------------------------------------------------


def test_fifo_at_a_chunk_path_costs_that_chunk_only(tmp_path):
    """A FIFO at chunk 1's object path (where a naive reader's open() would hang for ever): retrieve
    keeps chunk 0, returns at once, the FIFO is removed as damage, close() returns."""
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(64))
    with engine(f"fs://{tmp_path}") as e1:
        e1.store(tokens, src, slots(64, 20))
        fifo = Path(e1._tiers.adapters[0].path_of(str(e1._keys(tokens, None)[1][1][2])))
    fifo.unlink()
    os.mkfifo(fifo)
    e2 = engine(f"fs://{tmp_path}?timeout=0.5")
    e2.register_kv_caches(dst, hints)
    t0 = time.monotonic()
    s_dst = slots(64, 21)
    assert e2.retrieve(tokens, dst, s_dst).tokens == 16
    assert time.monotonic() - t0 < 2.0
    assert torch.equal(rows(e2, dst, s_dst)[:, :, :16], rows(e2, src, slots(64, 20))[:, :, :16])
    assert not rows(e2, dst, s_dst)[:, :, 16:].any()
    assert not fifo.exists() and e2.l2_stats()[0]["damage_found"] == 1
    t0 = time.monotonic()
    e2.close()
    assert time.monotonic() - t0 < 2.0


def test_frozen_tier_retrieve_keeps_what_completed_and_close_is_bounded(tmp_path, own_redis):
    """Chunk 0 is in the fs tier, chunks 1..3 only in Redis, which freezes (SIGSTOP) before the
    retrieve: retrieve returns chunk 0 after the deadlines, close() returns within its bound."""
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(1000, 1064))
    near, far = f"fs://{tmp_path}?timeout=0.3", f"{own_redis.url}?timeout=0.3&socket_timeout=60"
    with engine([near, far]) as e1:
        e1.store(tokens, src, slots(64, 22))
        assert e1.flush(10)
        names = [str(k) for _, _, k in e1._keys(tokens, None)[1]]
        e1._tiers.adapters[0].delete(names[1:])
    e2 = engine([near, far], l2_prefetch=False, l2_flush_seconds=1)
    e2.register_kv_caches(dst, hints)
    assert e2.lookup(tokens).tokens == 64
    own_redis.pause()
    try:
        t0 = time.monotonic()
        s_dst = slots(64, 23)
        assert e2.retrieve(tokens, dst, s_dst).tokens == 16
        took = time.monotonic() - t0
        assert took < 0.3 * 3 + 1.5, took  # a lookup and a load deadline, not a 60 s socket wait
        assert torch.equal(rows(e2, dst, s_dst)[:, :, :16], rows(e2, src, slots(64, 22))[:, :, :16])
        rd = e2.l2_stats()[1]
        assert rd["timeouts"] >= 1 and rd.gauges["stuck_calls"] >= 1
        t0 = time.monotonic()
        e2.close()  # flush 1 s (nothing queued) + the slowest tier's deadline + 1 s at most
        assert time.monotonic() - t0 < 1 + 0.3 + 1 + 0.5
    finally:
        own_redis.resume()


def test_engine_comes_up_on_a_read_only_prefilled_cache_with_a_budget(tmp_path, mounts):
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(2000, 2048))
    with engine(f"fs://{tmp_path / 'fill'}") as e1:
        e1.store(tokens, src, slots(48, 24))
    ro = mounts.read_only(tmp_path / "fill", tmp_path / "ro")
    with engine(f"fs://{ro}?budget=1K") as e2:  # over budget, cannot evict, cannot lock
        e2.register_kv_caches(dst, hints)
        assert e2.lookup(tokens).tokens == 48 and e2.retrieve(tokens, dst, slots(48, 25)).tokens == 48
        assert torch.equal(rows(e2, src, slots(48, 24)), rows(e2, dst, slots(48, 25)))
        snap = e2.l2_stats()[0]
        assert snap.gauges["read_only"] == 1.0 and snap["load_hits"] == 3
        assert e2.store(list(range(3000, 3016)), src, slots(16, 26)).tokens == 16  # L1 takes it
        assert e2.flush(5) and e2.l2_stats()[0].failures_by_reason == {"store:read_only": 1}


def test_engine_comes_up_when_shards_cannot_be_made(tmp_path, mounts):
    fs = mounts.tmpfs(tmp_path / "small", nr_inodes=40)  # 256 shard directories will not fit
    src, _ = pool()
    with engine(f"fs://{fs}?budget=1M") as e:
        e.register_kv_caches(src, pool(fill=False)[1])
        assert e.store(list(range(16)), src, slots(16, 27)).tokens == 16
        assert e.flush(5)
        snap = e.l2_stats()[0]
        assert snap["shard_failures"] > 0 and snap["store_ok"] + snap["store_failed"] == 1


def test_engine_comes_up_with_its_redis_cluster_down():
    from .conftest import free_port

    src, hints = pool()
    dst, _ = pool(fill=False)
    url = f"redis+cluster://127.0.0.1:{free_port()}?connect_timeout=0.3&retry_min=30"
    with engine(url) as e:
        e.register_kv_caches(src, hints)
        snap = e.l2_stats()[0]
        assert snap.gauges["available"] == 0.0 and snap["unavailable_events"] == 1
        assert e.store(list(range(32)), src, slots(32, 28)).tokens == 32
        assert (
            e.lookup(list(range(32))).tokens == 32
            and e.retrieve(list(range(32)), dst, slots(32, 29)).tokens == 32
        )


def test_results_split_l1_and_l2_and_lookups_need_no_kv(tmp_path):
    """Issue 11.5: the tiers open with the engine, so a process that never sees the KV (a
    scheduler, declaring its chunk formats) looks up L2; lookup and retrieve report the L1/L2
    split in their result records."""
    src, hints = pool()
    dst, _ = pool(fill=False)
    tokens = list(range(7000, 7100))  # 6 full chunks and a partial one of 4 tokens
    with engine(f"fs://{tmp_path}") as e1:
        e1.register_kv_caches(src, hints)
        stored = e1.store(tokens, src, slots(100, 30))
        assert (stored.tokens, stored.chunks, stored.nbytes) == (100, 7, 6 * CHUNK_BYTES + CHUNK_BYTES // 4)
        assert (stored.l2_tokens, stored.l2_bytes, stored.l2_chunks) == (0, 0, 0) and stored.seconds > 0
        assert e1.flush(10)
        formats = [g.chunk_format for g in e1.spec.groups]
    cfg = CacheEngineConfig(chunk_size=CHUNK, l1_bytes=64 * CHUNK_BYTES, l2_urls=(f"fs://{tmp_path}",))
    with CacheEngine(cfg, chunk_formats=formats) as sched:  # no KV: no L1, nothing to prefetch into
        found = sched.lookup(tokens)
        assert (found.tokens, found.l2_tokens, found.l1_tokens, found.chunks) == (100, 100, 0, 7)
        assert found.nbytes == found.l2_bytes == stored.nbytes
        assert sched.l2_stats()[0]["prefetch_issued"] == 0
    with engine(f"fs://{tmp_path}", l2_prefetch=False) as e2:
        e2.register_kv_caches(dst, hints)
        assert e2.lookup(tokens).l2_tokens == 100
        got = e2.retrieve(tokens, dst, slots(100, 31))
        assert (got.tokens, got.chunks, got.nbytes) == (100, 7, stored.nbytes)
        assert (got.l2_tokens, got.l2_chunks, got.l2_bytes, got.l1_bytes) == (100, 7, stored.nbytes, 0)
        again = e2.lookup(tokens)  # now in L1
        assert (again.tokens, again.l1_tokens, again.l2_bytes) == (100, 100, 0)
        with pytest.raises(AttributeError):
            again.tokens = 0  # type: ignore[misc]  # frozen
