"""L1Pool's hooks for pools in memory the pool must hand back (the cache server's shared memory):
``free`` when a buffer is dropped for good, ``listener`` on entries in and out, ``evict_matching``."""

from __future__ import annotations

import torch

from lmcache_core.memory.l1_pool import L1Entry, L1Pool


def test_free_listener_and_evict_matching() -> None:
    freed: list[int] = []
    events: list[tuple[str, int]] = []
    made: dict[int, int] = {}

    def allocate(n: int) -> torch.Tensor:
        t = torch.empty(n, dtype=torch.uint8)
        made[t.data_ptr()] = n
        return t

    def listener(entry: L1Entry, sign: int) -> None:
        events.append((str(entry.key), sign))

    pool = L1Pool(300, allocate, free=lambda b: freed.append(b.numel()), listener=listener)
    for key in ("a1", "b1", "a2"):
        buf = pool.reserve(100)
        assert buf is not None
        pool.commit(key, buf, 1)
    assert events == [("a1", 1), ("b1", 1), ("a2", 1)]
    assert pool.evict_matching(lambda e: str(e.key).startswith("b"))
    assert events[-1] == ("b1", -1) and "b1" not in pool and "a1" in pool
    assert not pool.evict_matching(lambda e: str(e.key) == "zz")
    pinned = pool.pin("a1")
    assert pinned is not None and not pool.evict_matching(lambda e: str(e.key) == "a1"), "pinned stays"
    pool.unpin(pinned)
    big = pool.reserve(200)  # another size: the free 100-byte buffer and the LRU entry go for good
    assert big is not None and freed == [100, 100]
    assert events[-1] == ("a2", -1), "a2 is least recently used (pinning a1 touched it)"
    pool.clear()
    assert events[-1] == ("a1", -1) and freed == [100, 100, 100]


def test_without_hooks_behaviour_is_unchanged() -> None:
    pool = L1Pool(200, lambda n: torch.empty(n, dtype=torch.uint8))
    buf = pool.reserve(100)
    assert buf is not None
    pool.commit("k", buf, 1)
    assert pool.evict_matching(lambda e: True) and "k" not in pool
    assert pool.stats().used_bytes == 100 and pool.stats().free_buffers == 1
