"""L2 tiers behind the L1 pool: write-behind, lookup across tiers, prefetch into L1.

Write-behind: ``CacheEngine.store`` commits a chunk to L1 pinned once per tier and hands it to
:meth:`L2Tiers.write_behind`, which returns at once. Each tier has a bounded queue (items and
bytes) drained by ``workers`` threads in batches of up to ``batch`` chunks; a chunk is unpinned
when its tier has finished with it, so L1 never evicts a chunk still waiting for L2. When a
queue is full the chunk is not queued for that tier (counted as ``write_dropped``, never
blocking the store) and its pin is released at once; it then lives in L1 only.

Lookup and prefetch: :meth:`L2Tiers.locate` asks the tiers in order which keys they hold (one
batched lookup per tier); :meth:`L2Tiers.prefetch` starts L2 -> L1 loads of found chunks into
buffers reserved from L1, committed when verified. :meth:`L2Tiers.fetch` is what retrieve calls
on an L1 miss: it waits for that chunk's prefetch, or loads it now, and returns it pinned.

Codecs (a tier's ``serde`` chain, :mod:`lmcache_core.serde`) run inside the adapter's store and
load, so on the write-behind threads and the load threads here (a fetch that loads now waits
for a load thread): never on the engine's step. L1 always holds plaintext.

Several tiers stack in order (first = nearest): every tier receives every stored chunk; a
lookup takes each chunk from the first tier that has it.

Life cycle: :class:`L2Tiers` opens its adapters when it is made, so lookups work before any KV
is registered (a scheduler process that never sees the KV); :meth:`L2Tiers.attach_l1` (at the
engine's first registration) gives it the L1 pool and starts the write-behind threads, after
which writes, prefetches and fetches run. :func:`chunk_ref` builds what the tiers need to know of
a chunk, its header meta included (:func:`~lmcache_core.storage.object_format.chunk_meta`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.storage.adapter import L2Adapter, LoadRequest, OpResult, Status, StoreItem
from lmcache_core.storage.metrics import TierSnapshot
from lmcache_core.storage.object_format import ObjectHeader, ObjectMeta, chunk_meta

if TYPE_CHECKING:
    from lmcache_core.layout import ChunkFormat
    from lmcache_core.memory.l1_pool import L1Entry, L1Pool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkRef:
    """A chunk as the tiers see it: its L1 key, its L2 key text, size and expected header meta."""

    key: Hashable
    name: str
    nbytes: int
    meta: ObjectMeta


def chunk_ref(key: Hashable, spec_tag: str, formats: Sequence[ChunkFormat], num_tokens: int) -> ChunkRef:
    """The :class:`ChunkRef` of a chunk of ``num_tokens`` tokens: L2 name ``str(key)``, size in
    bytes (every group's chunk back to back) and header meta."""
    nbytes = sum(f.nbytes(num_tokens) for f in formats)
    return ChunkRef(key, str(key), nbytes, chunk_meta(spec_tag, formats, num_tokens))


@dataclass
class _WriteJob:
    ref: ChunkRef
    entry: L1Entry


def _payload(entry: L1Entry) -> Any:
    """Zero-copy buffer view of an L1 entry's uint8 host tensor."""
    return entry.buffer.numpy()


class _WriteQueue:
    """Bounded write-behind queue of one tier and its worker threads."""

    def __init__(self, adapter: L2Adapter, l1: L1Pool, max_items: int, max_bytes: int, batch: int,
                 workers: int) -> None:  # fmt: skip
        self.adapter = adapter
        self.l1 = l1
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.batch = batch
        self._q: deque[_WriteJob] = deque()
        self._bytes = 0
        self._busy = 0
        self._closing = False
        self._cv = threading.Condition()
        m = adapter.metrics
        m.gauge("write_queue_items", lambda: float(len(self._q)))
        m.gauge("write_queue_bytes", lambda: float(self._bytes))
        m.gauge("write_in_flight", lambda: float(self._busy))
        self._threads = [
            threading.Thread(target=self._work, name=f"l2-write-{adapter.url.scheme}-{i}", daemon=True)
            for i in range(workers)
        ]
        for t in self._threads:
            t.start()

    def offer(self, job: _WriteJob) -> bool:
        with self._cv:
            if (
                self._closing
                or len(self._q) >= self.max_items
                or self._bytes + job.ref.nbytes > self.max_bytes
            ):
                return False
            self._q.append(job)
            self._bytes += job.ref.nbytes
            self._cv.notify()
            return True

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._q and not self._closing:
                    self._cv.wait()
                if not self._q:
                    return
                jobs = [self._q.popleft() for _ in range(min(self.batch, len(self._q)))]
                self._busy += 1
            held: set[int] = set()  # jobs whose payload a stalled store may still read
            try:
                items = [
                    StoreItem(j.ref.name, _payload(j.entry), j.ref.meta, self._unpin_later(j.entry))
                    for j in jobs
                ]
                results = self.adapter.store(items)
                held = {
                    i for i, r in enumerate(results) if r.status is Status.TIMEOUT and r.buffer is not None
                }
            except Exception as e:  # the adapter counts and logs its own failures; this is a bug guard
                logger.error(
                    "L2 %s: write-behind batch failed: %s: %s", self.adapter.name, type(e).__name__, e
                )
            finally:
                for i, j in enumerate(jobs):
                    if i not in held:  # a held one is unpinned by abandon, when the store lets go
                        self.l1.unpin(j.entry)
                with self._cv:
                    self._busy -= 1
                    self._bytes -= sum(j.ref.nbytes for j in jobs)
                    self._cv.notify_all()

    def _unpin_later(self, entry: L1Entry) -> Callable[[Any], None]:
        return lambda _payload: self.l1.unpin(entry)

    def flush(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._q or self._busy:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Stop the workers after their current batch (waiting up to ``timeout`` seconds; each
        batch is bounded by the adapter's deadline anyway); chunks still queued are not written."""
        with self._cv:
            self._closing = True
            left = list(self._q)
            self._q.clear()
            self._bytes -= sum(j.ref.nbytes for j in left)
            self._cv.notify_all()
        for j in left:
            self.l1.unpin(j.entry)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._threads:
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))


class _Ticket:
    """One chunk's prefetch: set when its load has finished (``hit`` tells how)."""

    __slots__ = ("event", "hit")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.hit = False


def _held(result: OpResult) -> bool:
    """Whether a stalled call may still write the result's buffer (it then goes to ``abandon``)."""
    return result.status is Status.TIMEOUT and result.buffer is not None


def locate(adapters: Sequence[L2Adapter], names: Sequence[str]) -> list[int | None]:
    """For each name, the index of the first of ``adapters`` holding it (None: none does); one
    batched lookup per tier, each asked only about names the tiers before it lacked."""
    where: list[int | None] = [None] * len(names)
    for t, adapter in enumerate(adapters):
        todo = [i for i, w in enumerate(where) if w is None]
        if not todo:
            break
        found = adapter.lookup([names[i] for i in todo])
        for i, f in zip(todo, found, strict=True):
            if f:
                where[i] = t
    return where


class L2Tiers:
    """The stacked L2 tiers of one engine, with their write-behind queues and prefetches.

    ``urls``: the tiers, nearest first (``fs:///mnt/kv?budget=200G``, ``redis://host:6379/0``,
    ...), opened here through :func:`lmcache_core.storage.registry.open_adapters`.
    ``queue_bytes`` / ``queue_items`` bound each tier's write-behind queue (bytes, chunks);
    ``batch`` is the chunks per adapter call; ``workers`` the write-behind threads per tier.
    Lookups (:meth:`locate`, :meth:`found_run`) work at once; writes, prefetches and fetches
    need :meth:`attach_l1` first.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        queue_bytes: int,
        queue_items: int = 1024,
        batch: int = 8,
        workers: int = 2,
    ) -> None:
        for name, v in (("queue_bytes", queue_bytes), ("queue_items", queue_items), ("batch", batch),
                        ("workers", workers)):  # fmt: skip
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        from lmcache_core.storage.registry import open_adapters

        self.adapters: list[L2Adapter] = open_adapters(urls)
        self.l1: L1Pool | None = None
        self.batch = batch
        self._queue_bytes = queue_bytes
        self._queue_items = queue_items
        self._workers = workers
        self._queues: list[_WriteQueue] = []
        self._lock = threading.Lock()
        self._tickets: dict[Hashable, _Ticket] = {}
        for a in self.adapters:
            a.metrics.gauge("prefetch_in_flight", lambda: float(len(self._tickets)))
        self._closed = False

    def attach_l1(self, l1: L1Pool) -> None:
        """Use ``l1`` for write-behind, prefetch and fetch, and start the write-behind threads.
        Once: a second call with the same pool does nothing, with another one raises."""
        if self.l1 is l1:
            return
        if self.l1 is not None:
            raise RuntimeError("attach_l1: these tiers already serve another L1 pool")
        if self._closed:
            raise RuntimeError("attach_l1: the tiers are closed")
        self.l1 = l1
        self._queues = [
            _WriteQueue(a, l1, self._queue_items, self._queue_bytes, self.batch, self._workers)
            for a in self.adapters
        ]

    def _attached(self, what: str) -> L1Pool:
        if self.l1 is None:
            raise RuntimeError(
                f"{what}: no L1 pool attached yet (attach_l1 comes with the first KV registration)"
            )
        return self.l1

    # ---- write-behind --------------------------------------------------------------------------

    @property
    def pins_per_store(self) -> int:
        """How many times :meth:`write_behind` expects a newly committed chunk to be pinned."""
        return len(self.adapters)

    def write_behind(self, ref: ChunkRef, entry: L1Entry) -> int:
        """Queue ``entry`` (pinned :attr:`pins_per_store` times) for every tier; returns how many
        tiers dropped it because their queue was full (their pins are released here)."""
        l1 = self._attached("write_behind")
        dropped = 0
        for q in self._queues:
            if q.offer(_WriteJob(ref, entry)):
                q.adapter.metrics.inc("write_queued")
            else:
                l1.unpin(entry)
                q.adapter.metrics.inc("write_dropped")
                q.adapter.log.warning("dropped", f"write-behind queue full; {ref.name} kept in L1 only")
                dropped += 1
        return dropped

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk has been written (or failed); False on time-out."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for q in self._queues:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not q.flush(left):
                return False
        return True

    # ---- lookup and prefetch -----------------------------------------------------------------

    def locate(self, names: Sequence[str]) -> list[int | None]:
        """For each name, the index of the first tier holding it (None: no tier does)."""
        return locate(self.adapters, names)

    def found_run(self, refs: Sequence[ChunkRef], prefetch: bool) -> int:
        """How many of ``refs``, in order from the first, are in L1 or in a tier (one batched
        lookup per tier, for the ones L1 lacks); when ``prefetch`` and an L1 is attached, starts
        loading the tier ones of that run into L1."""
        l1 = self.l1
        in_l1 = [l1 is not None and ref.key in l1 for ref in refs]
        need = [i for i, hit in enumerate(in_l1) if not hit]
        where = dict(zip(need, self.locate([refs[i].name for i in need]), strict=True))
        run = 0
        to_fetch: list[ChunkRef] = []
        tiers: list[int] = []
        for i, ref in enumerate(refs):
            tier = None if in_l1[i] else where[i]
            if not in_l1[i] and tier is None:
                break
            run += 1
            if tier is not None and prefetch:
                to_fetch.append(ref)
                tiers.append(tier)
        if to_fetch and l1 is not None:
            self.prefetch(to_fetch, tiers)
        return run

    def pending(self, key: Hashable) -> bool:
        """Whether a prefetch of ``key`` is under way."""
        with self._lock:
            return key in self._tickets

    def prefetch(self, refs: Sequence[ChunkRef], tiers: Sequence[int]) -> int:
        """Start loading ``refs[i]`` from tier ``tiers[i]`` into L1; returns how many started.

        Chunks already in L1 or already being fetched are skipped, and so is every chunk after
        the first one L1 cannot make room for. Without an attached L1 nothing starts.
        """
        l1 = self.l1
        if l1 is None:
            return 0
        by_tier: dict[int, list[tuple[ChunkRef, _Ticket, Any]]] = {}
        for ref, tier in zip(refs, tiers, strict=True):
            if ref.key in l1:
                continue
            with self._lock:
                if self._closed or ref.key in self._tickets:
                    continue
                buffer = l1.reserve(ref.nbytes)
                if buffer is None:
                    break
                ticket = _Ticket()
                self._tickets[ref.key] = ticket
            by_tier.setdefault(tier, []).append((ref, ticket, buffer))
        started = 0
        for tier, jobs in by_tier.items():
            adapter = self.adapters[tier]
            adapter.metrics.inc("prefetch_issued", len(jobs))
            for i in range(0, len(jobs), self.batch):
                part = jobs[i : i + self.batch]
                reqs = [
                    LoadRequest(ref.name, self._alloc(ref, buf), self._release_later(buf))
                    for ref, _, buf in part
                ]
                try:
                    fut = adapter.submit_load(reqs)
                except RuntimeError:  # adapter closed
                    self._finish(part, [OpResult(Status.UNAVAILABLE)] * len(part))
                    continue
                fut.add_done_callback(self._on_loaded(part))
                started += len(part)
        return started

    def _release_later(self, buffer: Any) -> Callable[[Any], None]:
        """``abandon`` of a load into ``buffer``: back to L1 once a stalled load lets go of it."""
        l1 = self._attached("prefetch")
        return lambda _view: l1.release(buffer)

    @staticmethod
    def _alloc(ref: ChunkRef, buffer: Any) -> Callable[[ObjectHeader], Any]:
        view = buffer.numpy()

        def alloc(header: ObjectHeader) -> Any:
            if header.payload_len != ref.nbytes or header.meta != ref.meta:
                return None  # another format or size under this key: never load it
            return view

        return alloc

    def _on_loaded(
        self, part: list[tuple[ChunkRef, _Ticket, Any]]
    ) -> Callable[[Future[list[OpResult]]], None]:
        def done(fut: Future[list[OpResult]]) -> None:
            try:
                results = fut.result()
            except Exception as e:
                logger.error("L2 prefetch failed: %s: %s", type(e).__name__, e)
                results = [OpResult(Status.FAILED, type(e).__name__)] * len(part)
            self._finish(part, results)

        return done

    def _finish(self, part: list[tuple[ChunkRef, _Ticket, Any]], results: list[OpResult]) -> None:
        l1 = self._attached("prefetch")
        for (ref, ticket, buffer), r in zip(part, results, strict=True):
            if r.status is Status.HIT:
                l1.commit(ref.key, buffer, ref.meta.num_tokens)
                ticket.hit = True
            elif not _held(r):  # a held buffer goes back through the request's abandon
                l1.release(buffer)
            with self._lock:
                self._tickets.pop(ref.key, None)
            ticket.event.set()

    def wait_limit(self) -> float:
        """Longest a caller waits for one chunk's prefetch: a batch of ``batch`` keys at the
        slowest tier's deadline each, plus a second of slack."""
        return max((a.timeout for a in self.adapters), default=0.0) * self.batch + 1.0

    def fetch(self, ref: ChunkRef, tier: int | None = None, timeout: float | None = None) -> L1Entry | None:
        """The chunk pinned in L1: waits for its prefetch (at most ``timeout`` seconds, default
        :meth:`wait_limit`), or loads it now from the first tier holding it (``tier`` when
        known), under that tier's deadline. None when no tier has a valid copy in time."""
        l1 = self._attached("fetch")
        with self._lock:
            ticket = self._tickets.get(ref.key)
        if ticket is not None:
            ticket.event.wait(self.wait_limit() if timeout is None else timeout)
            entry = l1.pin(ref.key)
            if entry is not None or not ticket.hit:
                return entry
        else:
            entry = l1.pin(ref.key)
            if entry is not None:
                return entry
        order = [tier] if tier is not None else list(range(len(self.adapters)))
        for t in order:
            buffer = l1.reserve(ref.nbytes)
            if buffer is None:
                return None
            req = LoadRequest(ref.name, self._alloc(ref, buffer), self._release_later(buffer))
            result = self._load_off_thread(t, req)
            if result.status is Status.HIT:
                return l1.commit(ref.key, buffer, ref.meta.num_tokens, pins=1)
            if not _held(result):
                l1.release(buffer)
        return None

    def _load_off_thread(self, tier: int, req: LoadRequest) -> OpResult:
        """Load ``req`` on the tier's load threads (where its codecs decode), waiting for it: the
        calling thread (the engine's step) runs no codec. The adapter bounds the call by its
        deadline (a key past it comes back ``TIMEOUT``, its buffer handed to ``abandon``)."""
        adapter = self.adapters[tier]
        if not adapter.serde:
            return adapter.load([req])[0]
        try:
            fut = adapter.submit_load([req])
        except RuntimeError:  # closed
            return OpResult(Status.UNAVAILABLE)
        try:
            return fut.result()[0]
        except Exception as e:  # load raised: the call is over, nothing holds the buffer
            logger.error("L2 %s: fetch of %s failed: %s: %s", adapter.name, req.key, type(e).__name__, e)
            return OpResult(Status.FAILED, type(e).__name__)

    # ---- the rest ----------------------------------------------------------------------------

    def snapshots(self) -> list[TierSnapshot]:
        return [a.metrics.snapshot() for a in self.adapters]

    def close(self, flush_timeout: float | None = 30.0, stop_timeout: float | None = None) -> None:
        """Finish queued writes (up to ``flush_timeout`` seconds), then stop threads and adapters
        (up to ``stop_timeout`` more seconds, default each tier's deadline + 1 s). Returns within
        those times whatever the threads do: a stalled one is left to finish on its own."""
        if not self.flush(flush_timeout):
            logger.warning("L2: write-behind not finished after %s s; remaining chunks are not written",
                           flush_timeout)  # fmt: skip
        with self._lock:
            self._closed = True
        limit = (
            stop_timeout
            if stop_timeout is not None
            else max((a.timeout for a in self.adapters), default=0) + 1
        )
        deadline = time.monotonic() + limit
        for q in self._queues:
            q.close(max(0.0, deadline - time.monotonic()))
        for a in self.adapters:
            a.close(max(0.0, deadline - time.monotonic()))
