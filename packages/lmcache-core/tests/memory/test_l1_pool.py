import threading

import pytest
import torch

from lmcache_core.memory.l1_pool import L1Pool


def make_pool(capacity):
    allocated = []

    def alloc(n):
        buf = torch.empty(n, dtype=torch.uint8)
        allocated.append(buf)
        return buf

    return L1Pool(capacity, alloc), allocated


def put(pool, key, n, tokens=1, fill=0):
    buf = pool.reserve(n)
    assert buf is not None
    buf.fill_(fill)
    pool.commit(key, buf, tokens)
    return buf


def test_lru_eviction_keeps_recent():
    pool, _ = make_pool(300)
    put(pool, "a", 100)
    put(pool, "b", 100)
    put(pool, "c", 100)
    assert pool.touch("a")  # a is now most recent; b is the oldest
    put(pool, "d", 100)
    assert "b" not in pool and {"a", "c", "d"} <= {k for k in "abcd" if k in pool}
    st = pool.stats()
    assert (st.evictions, st.evicted_bytes, st.used_bytes, st.entries) == (1, 100, 300, 3)


def test_a_chunk_read_through_pin_becomes_most_recently_used():
    """A hit (pin, read, unpin) refreshes the chunk: eviction takes the oldest unread one, not it."""
    pool, _ = make_pool(300)
    put(pool, "a", 100, fill=1)
    put(pool, "b", 100, fill=2)
    put(pool, "c", 100, fill=3)
    entry = pool.pin("a")  # a is read back into KV: a hit
    assert entry is not None and bool((entry.buffer == 1).all())
    pool.unpin(entry)
    put(pool, "d", 100)  # the pool is full: one chunk goes
    assert ("a" in pool, "b" in pool, "c" in pool, "d" in pool) == (True, False, True, True)
    put(pool, "e", 100)  # then c, the oldest left; a stays until it is the oldest
    assert ("a" in pool, "c" in pool) == (True, False)
    put(pool, "f", 100)
    assert "a" not in pool and pool.stats().evictions == 3
    assert [k for k in "abcdef" if k in pool] == ["d", "e", "f"]


def test_evicted_buffers_are_reused_not_reallocated():
    pool, allocated = make_pool(200)
    put(pool, "a", 100)
    put(pool, "b", 100)
    put(pool, "c", 100)
    put(pool, "d", 100)
    assert len(allocated) == 2 and pool.stats().reuses == 2


def test_pinned_chunk_is_never_evicted():
    pool, _ = make_pool(200)
    put(pool, "a", 100, fill=7)
    put(pool, "b", 100)
    entry = pool.pin("a")
    assert entry is not None
    put(pool, "c", 100)  # must evict b, not the pinned a
    assert "a" in pool and "b" not in pool
    pool.pin("c")
    assert pool.reserve(100) is None  # everything left is pinned
    assert pool.stats().full_rejections == 1
    assert bool((entry.buffer == 7).all())
    pool.unpin(entry)
    assert pool.reserve(100) is not None


def test_different_sizes_and_oversize():
    pool, _ = make_pool(250)
    put(pool, "a", 100)
    put(pool, "b", 100)
    put(pool, "c", 150)  # evicts a (the oldest) and drops its 100-byte buffer: 100 + 150 fits
    assert "a" not in pool and "b" in pool and "c" in pool
    assert pool.stats().used_bytes == 250 and pool.stats().free_buffers == 0
    put(pool, "d", 200)  # evicts b and c
    assert len(pool) == 1 and pool.stats().used_bytes == 200
    assert pool.reserve(251) is None


def test_release_and_unpin_errors():
    pool, _ = make_pool(100)
    buf = pool.reserve(100)
    pool.release(buf)
    assert pool.reserve(100) is buf
    pool.commit("k", buf, 1)
    entry = pool.pin("k")
    pool.unpin(entry)
    with pytest.raises(ValueError, match="entry"):
        pool.unpin(entry)
    with pytest.raises(ValueError, match="capacity_bytes"):
        L1Pool(0, torch.empty)


def test_allocation_failure_returns_budget():
    def boom(n):
        raise MemoryError("no memory")

    pool = L1Pool(100, boom)
    with pytest.raises(MemoryError):
        pool.reserve(50)
    assert pool.stats().used_bytes == 0


def test_concurrent_use_keeps_budget():
    pool, _ = make_pool(64 * 10)
    errors = []

    def worker(tid):
        try:
            for i in range(300):
                key = (tid, i % 25)
                if pool.touch(key):
                    e = pool.pin(key)
                    if e is not None:
                        pool.unpin(e)
                    continue
                buf = pool.reserve(64)
                if buf is not None:
                    pool.commit(key, buf, 1)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    st = pool.stats()
    assert not errors
    assert st.used_bytes <= st.capacity_bytes
    assert st.entries * 64 + st.free_buffers * 64 == st.used_bytes
