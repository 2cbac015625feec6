import logging
import time

import numpy as np
import pytest

pytest.importorskip("redis")

from lmcache_core.storage import open_adapter
from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
from lmcache_core.storage.object_format import ObjectMeta

SIZE = 50_000
META = ObjectMeta("fmt", "uint8", (SIZE,), 16)


def content(i: int, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)


def store(a, ids):
    return a.store([StoreItem(f"k{i}", content(i), META) for i in ids])


def load(a, ids):
    bufs = {i: np.zeros(SIZE, np.uint8) for i in ids}
    res = a.load([LoadRequest(f"k{i}", (lambda b: lambda h: b)(bufs[i])) for i in ids])
    return res, bufs


def test_round_trip_pipelined(redis_server):
    import redis

    with open_adapter(f"{redis_server.url}?prefix=rt:") as a:
        assert [r.status for r in store(a, range(10))] == [Status.OK] * 10
        assert a.lookup([f"k{i}" for i in range(12)]) == [True] * 10 + [False] * 2
        res, bufs = load(a, range(12))
        assert [r.status for r in res] == [Status.HIT] * 10 + [Status.MISS] * 2
        assert all(np.array_equal(bufs[i], content(i)) for i in range(10))
        assert a.delete(["k0", "k1", "nope"]) == [True, True, False]
        snap = a.metrics.snapshot()
        assert snap["store_ok"] == 10 and snap["load_hits"] == 10 and snap["load_misses"] == 2
        assert snap.latency["load"].n == 12
    raw = redis.Redis(port=redis_server.port)
    assert raw.exists("rt:k5") and not raw.exists("rt:k0")


def test_corrupt_value_is_a_miss_and_deleted(redis_server):
    import redis

    raw = redis.Redis(port=redis_server.port)
    with open_adapter(f"{redis_server.url}?prefix=bad:") as a:
        store(a, [1, 2])
        value = bytearray(raw.get("bad:k1"))
        value[-1] ^= 1
        raw.set("bad:k1", bytes(value))
        raw.set("bad:k2", b"not an object at all")
        res, bufs = load(a, [1, 2])
        # k1 is ours and damaged: removed; k2 is in no format we know: a miss, left alone
        assert [(r.status, r.reason) for r in res] == [
            (Status.CORRUPT, "bad_checksum"),
            (Status.UNVERIFIABLE, "foreign_format"),
        ]
        assert not bufs[1].any() and not bufs[2].any()  # nothing was copied out of a bad object
        assert raw.exists("bad:k1") == 0 and raw.get("bad:k2") == b"not an object at all"
        snap = a.metrics.snapshot()
        assert snap["load_corrupt"] == 1 and snap["load_unverifiable"] == 1
        assert a.lookup(["k2"]) == [False]  # remembered as bad: no longer a hit


def test_server_out_of_memory_fails_those_keys_only(own_redis):
    own_redis.cli("config", "set", "maxmemory", "3mb")
    own_redis.cli("config", "set", "maxmemory-policy", "noeviction")
    with open_adapter(f"{own_redis.url}?log_interval=60") as a:
        results = store(a, range(80))  # 80 x 50 kB > 3 MB
        assert results[0].status is Status.OK
        failed = [r for r in results if r.status is Status.FAILED]
        assert failed and {r.reason for r in failed} == {"OutOfMemoryError"}
        assert a.available and a.lookup(["k0"]) == [True]
        assert a.metrics.snapshot().failures_by_reason == {"store:OutOfMemoryError": len(failed)}


def test_server_stopped_then_back(own_redis, caplog):
    """Redis stops mid-run: the tier is marked unavailable, calls answer at once without I/O,
    one log line says so; when the server returns the adapter reconnects after its back-off."""
    caplog.set_level(logging.WARNING, logger="lmcache_core.storage")
    url = f"{own_redis.url}?retry_min=0.2&retry_max=0.4&connect_timeout=0.5&socket_timeout=1"
    with open_adapter(url) as a:
        store(a, [1])
        own_redis.stop()
        t0 = time.perf_counter()
        assert store(a, [2])[0].status is Status.UNAVAILABLE
        for _ in range(50):  # a burst while down: no I/O, no waiting, no log flood
            assert a.lookup(["k1"]) == [False]
            assert load(a, [1])[0][0].status is Status.UNAVAILABLE
        assert time.perf_counter() - t0 < 2.0
        snap = a.metrics.snapshot()
        assert not a.available and snap["unavailable_events"] == 1 and snap["unavailable_skips"] >= 101
        assert snap.gauges["available"] == 0.0
        own_redis.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 10
        while not a.available and time.monotonic() < deadline:
            a.lookup(["k1"])
            time.sleep(0.05)
        assert a.available and a.metrics.snapshot()["reconnects"] == 1
        assert store(a, [3])[0].status is Status.OK and load(a, [3])[0][0].status is Status.HIT
    text = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in t for t in text) == 1 and sum("available again" in t for t in text) == 1
    assert not any(r.exc_info for r in caplog.records)


def test_cluster_round_trip_across_nodes(redis_cluster):
    import redis.cluster

    with open_adapter(f"{redis_cluster}?prefix=c:") as a:
        ids = range(30)  # keys hash to slots on all three masters
        assert [r.status for r in store(a, ids)] == [Status.OK] * 30
        assert a.lookup([f"k{i}" for i in ids]) == [True] * 30
        res, bufs = load(a, ids)
        assert all(r.status is Status.HIT for r in res)
        assert all(np.array_equal(bufs[i], content(i)) for i in ids)
        assert all(a.delete([f"k{i}" for i in ids]))
    host, port = redis_cluster.rsplit("/", 1)[1].split(":")
    rc = redis.cluster.RedisCluster(host=host, port=int(port))
    nodes = {rc.get_node_from_key(f"c:k{i}").name for i in ids}
    assert len(nodes) == 3  # the batch really was spread over every master
    rc.close()
