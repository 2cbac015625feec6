"""A bounded, per-process memory of keys whose object is bad and could not be removed.

Some damage cannot be deleted by this process: a directory at an object path, an object in a
read-only or immutable store, an object in a format or version this reader cannot judge, a key
that made a call pass its deadline. Without a memory each lookup of such a key is a hit, and each
costs a failed load and a recompute. :class:`BadKeys` remembers up to ``capacity`` keys (the
least recently added go first) for ``ttl`` seconds each, so damage that someone repairs, or a
mount that comes back, is tried again later.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict


class BadKeys:
    """Key -> (reason, expiry), bounded LRU; thread-safe."""

    def __init__(self, capacity: int, ttl: float) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._lock = threading.Lock()
        self._keys: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def add(self, key: str, reason: str) -> bool:
        """Remember ``key`` as bad; True when it was not remembered before."""
        if self.capacity == 0:
            return False
        with self._lock:
            new = key not in self._keys
            self._keys[key] = (reason, time.monotonic() + self.ttl)
            self._keys.move_to_end(key)
            while len(self._keys) > self.capacity:
                self._keys.popitem(last=False)
            return new

    def reason(self, key: str) -> str | None:
        """Why ``key`` is remembered as bad, or None (not remembered, or expired)."""
        if not self._keys:  # fast path, no lock: the common case is an empty memory
            return None
        with self._lock:
            item = self._keys.get(key)
            if item is None:
                return None
            if item[1] < time.monotonic():
                del self._keys[key]
                return None
            return item[0]

    def forget(self, key: str) -> None:
        if self._keys:
            with self._lock:
                self._keys.pop(key, None)

    def __len__(self) -> int:
        return len(self._keys)
