"""Stores in flight: chunks whose gather is queued on the copy stream but not yet known complete.

A store reserves an L1 buffer, queues the gather (after the forward that writes the KV) and
records an event behind it; the chunk is committed to L1 only once that event has completed, so
no reader (a lookup, a retrieve, the L2 writer) ever sees a buffer the device is still writing.
:class:`PendingStores` keeps those chunks in queue order and hands back the ones whose event the
backend reports complete. It never blocks; ``wait`` is for close and error paths only.

Thread-safe. Plain Python: the backend's event calls are passed in.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class PendingChunk:
    """One queued store: its key, reserved buffer (uint8 ``[nbytes]``), tokens, the event recorded
    after its gather, and the owner it is reported to (a request id, or None)."""

    key: Any  # a CacheKey for the engine; any hashable here
    buffer: torch.Tensor
    num_tokens: int
    event: Any
    owner: Hashable | None = None


class PendingStores:
    """FIFO of :class:`PendingChunk`; events on one stream complete in queue order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[PendingChunk] = deque()
        self._keys: dict[Hashable, int] = {}
        self._owners: dict[Hashable, int] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._keys

    def add(self, chunk: PendingChunk) -> None:
        with self._lock:
            self._queue.append(chunk)
            self._keys[chunk.key] = self._keys.get(chunk.key, 0) + 1
            if chunk.owner is not None:
                self._owners[chunk.owner] = self._owners.get(chunk.owner, 0) + 1

    def in_flight(self, owner: Hashable | None = None) -> int:
        """Chunks still queued: all of them, or those of ``owner``."""
        with self._lock:
            return len(self._queue) if owner is None else self._owners.get(owner, 0)

    def take_done(self, done: Callable[[Any], bool]) -> list[PendingChunk]:
        """Remove and return, in order, the leading chunks whose event ``done(event)`` reports
        complete; stops at the first one still running (later ones were queued after it)."""
        out: list[PendingChunk] = []
        with self._lock:
            while self._queue and done(self._queue[0].event):
                out.append(self._forget(self._queue.popleft()))
        return out

    def take_all(self) -> list[PendingChunk]:
        """Remove and return every chunk (the caller waits for their events)."""
        with self._lock:
            out = [self._forget(c) for c in self._queue]
            self._queue.clear()
            return out

    def _forget(self, chunk: PendingChunk) -> PendingChunk:
        for counts, name in ((self._keys, chunk.key), (self._owners, chunk.owner)):
            if name is None:
                continue
            left = counts.get(name, 0) - 1
            if left > 0:
                counts[name] = left
            else:
                counts.pop(name, None)
        return chunk
