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


# ---- wrong-typed values, a cluster down at start, deadlines, URL checks ------------------------


def test_wrong_typed_values_under_our_prefix_are_deleted(redis_server):
    import redis

    raw = redis.Redis(port=redis_server.port)
    raw.rpush("wt:k1", b"a", b"b")
    raw.hset("wt:k2", "f", "v")
    with open_adapter(f"{redis_server.url}?prefix=wt:") as a:
        assert a.lookup(["k1", "k2"]) == [False, False]
        assert raw.exists("wt:k1", "wt:k2") == 0  # our namespace: removed
        raw.rpush("wt:k3", b"x")
        res, _ = load(a, [3])
        assert (res[0].status, res[0].reason) == (Status.CORRUPT, "wrong_type") and not raw.exists("wt:k3")
        snap = a.metrics.snapshot()
        assert snap["wrong_type"] == 3 and snap.failures_by_reason == {"load:wrong_type": 1}
        assert store(a, [1])[0].status is Status.OK and load(a, [1])[0][0].status is Status.HIT


def test_wrong_typed_values_without_a_prefix_are_remembered_not_deleted(redis_server):
    import redis

    raw = redis.Redis(port=redis_server.port, db=1)
    raw.rpush("k1", b"somebody else's list")
    url = f"redis://127.0.0.1:{redis_server.port}/1?prefix="
    with open_adapter(url) as a:
        assert a.lookup(["k1"]) == [False] and a.lookup(["k1"]) == [False]
        assert load(a, [1])[0][0].status is Status.MISS
        snap = a.metrics.snapshot()
        assert snap["bad_keys_added"] == 1 and snap["bad_key_skips"] == 2
    assert raw.lrange("k1", 0, -1) == [b"somebody else's list"]
    raw.flushdb()


def test_wrong_typed_values_in_the_cluster(redis_cluster):
    import redis.cluster

    host, port = redis_cluster.rsplit("/", 1)[1].split(":")
    rc = redis.cluster.RedisCluster(host=host, port=int(port))
    for i in range(6):  # spread over the masters
        rc.rpush(f"cw:k{i}", b"x")
    with open_adapter(f"{redis_cluster}?prefix=cw:") as a:
        assert a.lookup([f"k{i}" for i in range(6)]) == [False] * 6
        assert sum(rc.exists(f"cw:k{i}") for i in range(6)) == 0
    rc.close()


def test_cluster_down_at_start_comes_up_on_its_own(tmp_path, caplog):
    from .conftest import free_port, start_single_node_cluster

    caplog.set_level(logging.WARNING, logger="lmcache_core.storage")
    port = free_port(also_plus=10000)
    url = f"redis+cluster://127.0.0.1:{port}?retry_min=0.1&retry_max=0.2&connect_timeout=0.5"
    with open_adapter(url) as a:  # nothing listens yet: no exception, the tier starts unavailable
        snap = a.metrics.snapshot()
        assert not a.available and snap["unavailable_events"] == 1 and snap.gauges["available"] == 0.0
        assert store(a, [1])[0].status is Status.UNAVAILABLE
        node = start_single_node_cluster(tmp_path / "late", port)
        try:
            deadline = time.monotonic() + 15
            while not a.available and time.monotonic() < deadline:
                a.lookup(["k1"])
                time.sleep(0.05)
            assert a.available and a.metrics.snapshot()["reconnects"] == 1
            assert store(a, [1])[0].status is Status.OK and load(a, [1])[0][0].status is Status.HIT
        finally:
            node.stop()
    text = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in t for t in text) == 1 and sum("available again" in t for t in text) == 1


def test_a_frozen_server_costs_one_deadline_per_call_then_the_tier_is_down(own_redis):
    """SIGSTOP: connections stay open and nothing answers (a long socket_timeout would wait 60 s).
    Each call returns at its deadline; three in a row mark the tier unavailable."""
    url = f"{own_redis.url}?timeout=0.3&timeout_strikes=3&socket_timeout=60&retry_min=5"
    with open_adapter(url) as a:
        store(a, [1])
        own_redis.pause()
        try:
            for call in range(3):
                t0 = time.monotonic()
                res, _ = load(a, [1])
                assert res[0].status is Status.TIMEOUT and 0.3 <= time.monotonic() - t0 < 1.5, call
            assert not a.available  # three timeouts in a row
            t0 = time.monotonic()
            assert a.lookup(["k1"]) == [False] and time.monotonic() - t0 < 0.05  # no I/O while down
            snap = a.metrics.snapshot()
            assert snap["timeouts"] == 3 and snap.failures_by_reason["load:deadline"] == 3
            assert snap["unavailable_events"] == 1
            t0 = time.monotonic()
            assert a.close(1.0) is False and time.monotonic() - t0 < 1.5  # returns, stalled or not
        finally:
            own_redis.resume()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("redis://", "a host"),
        ("redis:///0", "a host"),
        ("redis://127.0.0.1:6379/abc", "db: expected a database number"),
        ("redis://127.0.0.1:6379/0?socket_timeout=0", "socket_timeout: expected > 0"),
        ("redis://127.0.0.1:6379/0?socket_timeout=nan", "socket_timeout: expected a finite number"),
        ("redis://127.0.0.1:6379/0?connect_timeout=inf", "connect_timeout: expected a finite number"),
        ("redis://127.0.0.1:99999/0", "port: expected an integer in 1..65535, given '99999'"),
        ("redis://127.0.0.1:http/0", "port: expected an integer in 1..65535, given 'http'"),
        ("redis://127.0.0.1:6379/0?timeout=0", "timeout: expected > 0"),
        ("redis://127.0.0.1:6379/0?retry_min=1e400", "retry_min: expected a finite number"),
    ],
)
def test_bad_urls_name_the_setting(url, match):
    with pytest.raises(ValueError, match=match):
        open_adapter(url)
