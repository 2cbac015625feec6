"""L1: host-memory chunk store with a byte budget, LRU eviction and pinning.

Chunks live in host buffers (uint8 ``[nbytes]``, page-locked when the backend supports it) from
the backend's ``alloc_host``. Allocating and page-locking is slow, so buffers of evicted chunks go
to a free list and are reused by the next chunk of the same size (chunks nearly always are).

A pinned chunk (one being read into KV, or written to a lower tier) is never evicted. Every
method is thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class L1Entry:
    """A stored chunk: its host buffer, how many tokens it covers, and its pin count."""

    key: Hashable
    buffer: torch.Tensor
    num_tokens: int
    pins: int = 0

    @property
    def nbytes(self) -> int:
        return int(self.buffer.numel())


@dataclass
class L1Stats:
    """Counters since the pool was made; bytes are bytes of host buffers."""

    capacity_bytes: int
    used_bytes: int = 0
    entries: int = 0
    free_buffers: int = 0
    evictions: int = 0
    evicted_bytes: int = 0
    full_rejections: int = 0
    allocations: int = 0
    reuses: int = 0


class L1Pool:
    """LRU chunk store in host memory under ``capacity_bytes``.

    ``allocate(nbytes)`` returns a new uint8 host buffer ``[nbytes]``. Optional, for pools whose
    buffers live in memory the pool must hand back (the cache server's shared memory):
    ``free(buffer)`` is called when the pool drops a buffer for good; ``listener(entry, +1/-1)``
    when an entry enters or leaves the pool (called with the pool's lock held: it must not call
    the pool).
    """

    def __init__(
        self,
        capacity_bytes: int,
        allocate: Callable[[int], torch.Tensor],
        free: Callable[[torch.Tensor], None] | None = None,
        listener: Callable[[L1Entry, int], None] | None = None,
    ) -> None:
        if isinstance(capacity_bytes, bool) or not isinstance(capacity_bytes, int) or capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes: expected a positive int, given {capacity_bytes!r}")
        self._allocate = allocate
        self._free_buffer = free
        self._listener = listener
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, L1Entry] = OrderedDict()  # oldest first
        self._free: dict[int, list[torch.Tensor]] = {}
        self._stats = L1Stats(capacity_bytes=capacity_bytes)

    # ---- reading ------------------------------------------------------------------------------

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._entries

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def touch(self, key: Hashable) -> bool:
        """Mark ``key`` most recently used; False when absent."""
        with self._lock:
            if key not in self._entries:
                return False
            self._entries.move_to_end(key)
            return True

    def pin(self, key: Hashable) -> L1Entry | None:
        """Pin and return the entry (most recently used now), or None when absent.

        Every successful ``pin`` must be paired with :meth:`unpin`.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            entry.pins += 1
            self._entries.move_to_end(key)
            return entry

    def unpin(self, entry: L1Entry) -> None:
        with self._lock:
            if entry.pins <= 0:
                raise ValueError(f"entry: expected a pinned entry, given one with {entry.pins} pins")
            entry.pins -= 1

    # ---- writing ------------------------------------------------------------------------------

    def reserve(self, nbytes: int) -> torch.Tensor | None:
        """A buffer of ``nbytes`` for a new chunk, evicting LRU unpinned chunks to make room.

        None when the budget cannot be met (everything left is pinned, or ``nbytes`` exceeds the
        whole budget). The caller fills it and then calls :meth:`commit` or :meth:`release`.
        """
        with self._lock:
            s = self._stats
            if nbytes > s.capacity_bytes:
                s.full_rejections += 1
                return None
            free = self._free.get(nbytes)
            if free:
                s.reuses += 1
                return free.pop()
            while s.used_bytes + nbytes > s.capacity_bytes:
                if not self._drop_one_free() and not self._evict_one():
                    s.full_rejections += 1
                    return None
                free = self._free.get(nbytes)
                if free:  # eviction freed a buffer of the right size: reuse it
                    s.reuses += 1
                    return free.pop()
            s.used_bytes += nbytes
            s.allocations += 1
        try:
            return self._allocate(nbytes)
        except BaseException:
            with self._lock:
                s.used_bytes -= nbytes
            raise

    def commit(self, key: Hashable, buffer: torch.Tensor, num_tokens: int, pins: int = 0) -> L1Entry:
        """Store the filled ``buffer`` under ``key`` (most recently used) and return its entry.

        ``pins`` pins it at once (each pin paired with :meth:`unpin`): a chunk handed to a
        lower tier's writer, or to a waiting reader, cannot be evicted before they are done.
        """
        if isinstance(pins, bool) or not isinstance(pins, int) or pins < 0:
            raise ValueError(f"pins: expected a non-negative int, given {pins!r}")
        with self._lock:
            old = self._entries.get(key)
            if old is not None and old.pins == 0:  # a racing writer stored it first; keep one copy
                del self._entries[key]
                self._free.setdefault(old.nbytes, []).append(old.buffer)
                self._changed(old, -1)
            elif old is not None:  # the other copy is in use: keep it, recycle ours
                old.pins += pins
                self._entries.move_to_end(key)
                self._free.setdefault(int(buffer.numel()), []).append(buffer)
                return old
            entry = L1Entry(key, buffer, num_tokens, pins)
            self._entries[key] = entry
            self._changed(entry, 1)
            return entry

    def release(self, buffer: torch.Tensor) -> None:
        """Give back a reserved buffer that was not committed."""
        with self._lock:
            self._free.setdefault(int(buffer.numel()), []).append(buffer)

    def clear(self) -> None:
        """Drop every unpinned entry and free buffer."""
        with self._lock:
            for key in [k for k, e in self._entries.items() if e.pins == 0]:
                entry = self._entries.pop(key)
                self._stats.used_bytes -= entry.nbytes
                self._changed(entry, -1)
                if self._free_buffer is not None:
                    self._free_buffer(entry.buffer)
            while self._drop_one_free():
                pass

    def evict_matching(self, match: Callable[[L1Entry], bool]) -> bool:
        """Evict the least recently used unpinned entry for which ``match(entry)`` is true (its
        buffer goes to the free list); False when there is none. O(entries)."""
        with self._lock:
            for key, entry in self._entries.items():
                if entry.pins == 0 and match(entry):
                    self._evict(key, entry)
                    return True
            return False

    def stats(self) -> L1Stats:
        with self._lock:
            s = self._stats
            s.entries = len(self._entries)
            s.free_buffers = sum(len(v) for v in self._free.values())
            return L1Stats(**s.__dict__)

    # ---- internals (lock held) -----------------------------------------------------------------

    def _drop_one_free(self) -> bool:
        for size, buffers in self._free.items():
            if buffers:
                buffer = buffers.pop()
                self._stats.used_bytes -= size
                if self._free_buffer is not None:
                    self._free_buffer(buffer)
                return True
        return False

    def _evict_one(self) -> bool:
        for key, entry in self._entries.items():
            if entry.pins == 0:
                self._evict(key, entry)
                return True
        return False

    def _evict(self, key: Hashable, entry: L1Entry) -> None:
        del self._entries[key]
        self._free.setdefault(entry.nbytes, []).append(entry.buffer)
        self._stats.evictions += 1
        self._stats.evicted_bytes += entry.nbytes
        self._changed(entry, -1)

    def _changed(self, entry: L1Entry, sign: int) -> None:
        if self._listener is not None:
            self._listener(entry, sign)
