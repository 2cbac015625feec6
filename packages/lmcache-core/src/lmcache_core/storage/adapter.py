"""The L2 adapter interface: batched, thread-safe, non-blocking through futures.

An adapter stores whole chunk objects (:mod:`~lmcache_core.storage.object_format`) under string
keys in one tier (a directory, a Redis database, an S3 prefix). Subclasses implement four
synchronous batch primitives; this base class adds, for every adapter alike:

* ``submit_store / submit_lookup / submit_load / submit_delete``: run a batch on the adapter's
  own worker threads (``in_flight`` of them) and return a ``concurrent.futures.Future`` with
  one result per key, in order. ``store / lookup / load / delete`` are the same, run in the
  calling thread. Collect many futures with :func:`concurrent.futures.wait`.
* deadlines: every primitive runs on the adapter's daemon I/O threads
  (:mod:`~lmcache_core.storage.io_pool`) and the caller waits at most ``timeout`` seconds per key
  (per call for a tier that sends a batch at once, like Redis' pipeline). Past it that key is a
  ``TIMEOUT`` (a miss; keys finished before it keep their results), a key that stalled is
  remembered as bad, and ``timeout_strikes`` timed-out calls in a row mark the tier unavailable.
  A buffer that a stalled call may still touch is never handed back to its owner: the result
  carries it, and the request's ``abandon`` callback gets it when (if ever) the call lets go.
* health: a :class:`TierUnavailable` from a primitive (connection refused, timeout) marks the
  whole tier unavailable; until the back-off (doubling from ``retry_min`` to ``retry_max``
  seconds) has passed every call answers at once without I/O (misses, ``UNAVAILABLE`` results),
  then one caller probes with ``_ping`` (under the deadline too) and the tier is back when that
  succeeds.
* bad keys: keys whose object is bad and was not removed (read-only store, a foreign or newer
  format, a directory or a wrong-typed value at the key, a stalled read) are remembered in a
  bounded per-process :class:`~lmcache_core.storage.bad_keys.BadKeys` and answered as misses
  without I/O, so they stop counting as hits.
* counting into :class:`~lmcache_core.storage.metrics.TierMetrics` and one rate-limited log line
  per kind of failure (no tracebacks; the count of suppressed lines is in the next one).

Per-key failures that leave the tier usable (disk full, permission denied, an object over a
server's size limit) come back as ``FAILED`` results with a short reason (``ENOSPC``, ``EACCES``).

Codecs: a tier's ``serde`` URL parameter (``?serde=fp8,zstd,aesgcm:key_file=/etc/kv.key``, see
:mod:`lmcache_core.serde`) is its codec chain. :meth:`L2Adapter.store` encodes each payload
before the primitive sees it (the header then records the chain) and :meth:`L2Adapter.load`
decodes after the primitive verified the stored bytes, both in the calling thread: the tiers'
write-behind and load threads, never the engine's step. Primitives see encoded objects only;
callers see plain headers and plain bytes only. An object this tier cannot decode (a codec it
lacks, another key, failed authentication) is ``UNVERIFIABLE`` with the reason: a miss, left
in place, remembered as a bad key.

Payloads are any C-contiguous buffers (``bytes``, ``memoryview``, numpy arrays; a CPU torch
tensor through ``tensor.numpy()``); adapters never import torch.
"""

from __future__ import annotations

import abc
import enum
import errno
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from lmcache_core.storage.bad_keys import BadKeys
from lmcache_core.storage.io_pool import IOPool, PoolSaturated
from lmcache_core.storage.metrics import TierMetrics
from lmcache_core.storage.object_format import ObjectHeader, ObjectMeta, default_algorithm, parse_algorithm
from lmcache_core.storage.url import L2URL

logger = logging.getLogger("lmcache_core.storage")

R = TypeVar("R")


class TierUnavailable(Exception):
    """The tier as a whole cannot be reached (connection refused, timed out, endpoint gone)."""


class Status(enum.Enum):
    OK = "ok"  # stored
    PRESENT = "present"  # store skipped: the object is already there
    HIT = "hit"  # loaded and verified
    MISS = "miss"  # not there
    CORRUPT = "corrupt"  # there, but its header or checksum is wrong: a miss, never loaded
    UNVERIFIABLE = "unverifiable"  # there, but this reader cannot judge it: a miss, left in place
    REJECTED = "rejected"  # there, but the caller's alloc declined it (other format or size)
    FAILED = "failed"  # an error for this key; the tier stays usable
    UNAVAILABLE = "unavailable"  # the tier is down
    TIMEOUT = "timeout"  # past the deadline: a miss (a store not known to be done)


@dataclass(frozen=True)
class StoreItem:
    """One object to store: its key, payload buffer (``payload_len`` bytes) and what it is.

    ``abandon(payload)``, when given, is called once a store that passed its deadline lets go of
    the payload (maybe never); until then the payload must stay unchanged."""

    key: str
    payload: Any
    meta: ObjectMeta
    abandon: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class LoadRequest:
    """One object to load. ``alloc(header)`` returns a writable buffer of exactly
    ``header.payload_len`` bytes to load the payload into, or None to decline the object.
    ``abandon(buffer)``, when given, gets that buffer back once a load that passed its deadline
    lets go of it (maybe never); until then nobody else may use it."""

    key: str
    alloc: Callable[[ObjectHeader], Any]
    abandon: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class OpResult:
    """Result of one key of a store or load. For a ``HIT``: the header and the filled buffer.
    For a ``TIMEOUT`` with a ``buffer``: that buffer (a load's, or a store's payload) is still
    in use by the stalled call and goes to the item's ``abandon`` when it is released."""

    status: Status
    reason: str = ""
    header: ObjectHeader | None = None
    buffer: Any = None


def reason_of(exc: BaseException) -> str:
    """Short failure reason: ``ENOSPC`` for OSErrors with an errno, else the exception's type name."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def nbytes_of(buffer: Any) -> int:
    return memoryview(buffer).nbytes


class RateLimitedLog:
    """At most one WARNING per (tier, kind) every ``interval`` seconds; later lines say how many
    similar ones were suppressed in between."""

    def __init__(self, tier: str, interval: float = 30.0) -> None:
        self.tier = tier
        self.interval = interval
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self.interval:
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._last[kind] = now
            suppressed = self._suppressed.pop(kind, 0)
        more = f" ({suppressed} similar since the last line)" if suppressed else ""
        logger.warning("L2 %s: %s%s", self.tier, message, more)
        return True


class Health:
    """Up/down state of a tier with doubling back-off; thread-safe."""

    def __init__(self, retry_min: float, retry_max: float) -> None:
        self.retry_min = retry_min
        self.retry_max = max(retry_max, retry_min)
        self._lock = threading.Lock()
        self.down = False
        self._delay = retry_min
        self._next_try = 0.0
        self._probing = False

    def claim_probe(self) -> bool | None:
        """None: up, go ahead. True: down and this caller should probe now. False: skip (down)."""
        with self._lock:
            if not self.down:
                return None
            if self._probing or time.monotonic() < self._next_try:
                return False
            self._probing = True
            return True

    def mark_down(self) -> tuple[bool, float]:
        """Returns (newly down, seconds until the next try)."""
        with self._lock:
            newly = not self.down
            if newly:
                self._delay = self.retry_min
            else:
                self._delay = min(self._delay * 2, self.retry_max)
            self.down = True
            self._probing = False
            self._next_try = time.monotonic() + self._delay
            return newly, self._delay

    def mark_up(self) -> bool:
        with self._lock:
            was = self.down
            self.down = False
            self._probing = False
            self._delay = self.retry_min
            return was


class _Slot:
    """One key of a store or load under a deadline: who may still touch its buffer."""

    __slots__ = ("abandon", "alloc_fn", "held", "lock", "state")

    def __init__(self, held: Any, abandon: Callable[[Any], None] | None, alloc_fn: Any = None) -> None:
        self.lock = threading.Lock()
        self.state = "open"  # open -> closed (the call finished this key) | cancelled (deadline)
        self.held = held
        self.abandon = abandon
        self.alloc_fn = alloc_fn

    def alloc(self, header: ObjectHeader) -> Any:
        with self.lock:
            if self.state != "open":
                return None  # the caller has given up on this key: decline
            buf = self.alloc_fn(header)
            self.held = buf
            return buf

    def finish(self) -> None:
        with self.lock:
            late = self.state == "cancelled"
            self.state = "closed"
        if late and self.held is not None and self.abandon is not None:
            self.abandon(self.held)

    def cancel(self) -> OpResult | None:
        """None if the key finished in between, else its TIMEOUT result."""
        with self.lock:
            if self.state == "closed":
                return None
            self.state = "cancelled"
            return OpResult(Status.TIMEOUT, "deadline", buffer=self.held)


class _Decoding:
    """One load request through the tier's codec chain: the stored payload goes to a scratch
    buffer, the caller's buffer gets the decoded bytes."""

    __slots__ = ("chain", "header", "reason", "req", "scratch", "target")

    def __init__(self, chain: Any, req: LoadRequest) -> None:
        self.chain = chain
        self.req = req
        self.header: ObjectHeader | None = None
        self.target: Any = None
        self.scratch: Any = None
        self.reason = ""

    def alloc(self, header: ObjectHeader) -> Any:
        serde = header.meta.serde
        if serde is None:
            return self.req.alloc(header)
        from lmcache_core.serde.codec import CodecError

        try:
            self.chain.check(serde)
        except CodecError as e:
            self.reason = e.reason
            return None  # decline before any payload byte is read
        target = self.req.alloc(header.plain())
        if target is None:
            return None
        import numpy as np

        self.header, self.target = header, target
        self.scratch = np.empty(header.payload_len, np.uint8)
        return self.scratch

    def abandon(self, buffer: Any) -> None:
        if self.req.abandon is not None:
            self.req.abandon(self.target if buffer is self.scratch and self.target is not None else buffer)

    def finish(self, r: OpResult) -> OpResult:
        """The caller's result of the primitive's result ``r`` (decoding a verified payload)."""
        if self.reason and r.status is Status.REJECTED:
            return OpResult(Status.UNVERIFIABLE, self.reason)
        if self.scratch is None or self.header is None:
            return r
        if r.status is Status.TIMEOUT:
            return OpResult(r.status, r.reason, r.header, self.target if r.buffer is not None else None)
        if r.status is not Status.HIT:
            return OpResult(r.status, r.reason, r.header, r.buffer)
        from lmcache_core.serde.codec import CodecError

        h, meta = self.header, self.header.meta
        assert meta.serde is not None
        try:
            self.chain.decode(meta.serde, self.scratch, h.key, meta.fmt, meta.dtype, meta.shape, self.target)
        except CodecError as e:
            return OpResult(Status.UNVERIFIABLE, e.reason)
        return OpResult(Status.HIT, "", h.plain(), self.target)


class L2Adapter(abc.ABC):
    """Base of every L2 adapter. Construct through :func:`lmcache_core.storage.open_adapter`.

    Common URL parameters: ``checksum`` (``xxh3`` or ``crc32``; default xxh3), ``in_flight``
    (worker threads for ``submit_*``, default 4), ``retry_min`` / ``retry_max`` (reconnect
    back-off in seconds, default 0.5 and 30), ``log_interval`` (seconds between repeated log
    lines of one kind, default 30), ``timeout`` (deadline in seconds per key, or per call for a
    batched tier, default 5), ``timeout_strikes`` (timed-out calls in a row that mark the tier
    unavailable, default 3), ``max_stuck`` (calls left stalled past their deadline before the
    tier counts as down, default 8), ``bad_keys`` (keys remembered as bad, default 4096; 0 = off),
    ``bad_key_ttl`` (seconds, default 600) and ``serde`` (the codec chain, default none:
    :func:`lmcache_core.serde.parse_chain`).
    """

    #: URL schemes this class serves (documentation; the entry point names decide).
    schemes: ClassVar[tuple[str, ...]] = ()
    #: True: the primitives are called one key at a time, and the deadline is per key, so keys
    #: finished before a stalled one keep their results. False: one call per batch.
    per_key: ClassVar[bool] = False

    def __init__(self, url: L2URL) -> None:
        self.url = url
        self.name = url.redacted
        algo = url.text_param("checksum", "")
        self.algorithm = parse_algorithm(algo) if algo else default_algorithm()
        self.in_flight = url.int_param("in_flight", 4, minimum=1)
        self.metrics = TierMetrics(self.name)
        self.health = Health(url.float_param("retry_min", 0.5), url.float_param("retry_max", 30.0))
        self.log = RateLimitedLog(self.name, url.float_param("log_interval", 30.0))
        self.timeout = url.float_param("timeout", 5.0, positive=True)
        self.timeout_strikes = url.int_param("timeout_strikes", 3, minimum=1)
        self.bad = BadKeys(url.int_param("bad_keys", 4096), url.float_param("bad_key_ttl", 600.0))
        self._io = IOPool(f"l2-io-{url.scheme}", self.in_flight + 2, url.int_param("max_stuck", 8, minimum=1))
        self._strikes = 0
        self._pool: IOPool | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self.metrics.gauge("available", lambda: 0.0 if self.health.down else 1.0)
        self.metrics.gauge("bad_keys", lambda: float(len(self.bad)))
        self.metrics.gauge("stuck_calls", lambda: float(self._io.stuck))
        from lmcache_core.serde.chain import parse_chain

        self.serde = parse_chain(url.text_param("serde", ""))

    # ---- to implement --------------------------------------------------------------------------

    @abc.abstractmethod
    def _store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        """Store each item (``OK``, ``PRESENT`` or ``FAILED`` each); raise TierUnavailable if the
        tier cannot be reached at all."""

    @abc.abstractmethod
    def _lookup(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is present (no payload check)."""

    @abc.abstractmethod
    def _load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        """Load and verify each object into its request's buffer (``HIT``, ``MISS``, ``CORRUPT``,
        ``UNVERIFIABLE``, ``REJECTED`` or ``FAILED``). A corrupt object should be deleted (when
        the tier allows it; else :meth:`remember_bad`); an unverifiable one never is."""

    @abc.abstractmethod
    def _delete(self, keys: Sequence[str]) -> list[bool]:
        """Delete each key; True when something was deleted."""

    def _ping(self) -> None:
        """Raise TierUnavailable unless the tier answers (used to come back after being down)."""
        return None

    def _close(self) -> None:
        """Release connections and files."""
        return None

    # ---- for subclasses ------------------------------------------------------------------------

    def remember_bad(self, key: str, reason: str) -> None:
        """Answer ``key`` as a miss without I/O for ``bad_key_ttl`` seconds."""
        if self.bad.add(key, reason):
            self.metrics.inc("bad_keys_added")
            self.log.warning(f"bad:{reason}", f"{key}: {reason}; remembered as a miss")

    # ---- synchronous API (thread-safe) -------------------------------------------------------

    def store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        """Store a batch; one result per item, in order."""
        plain = list(items)
        encoded: list[StoreItem | OpResult] = [self._encode(i) for i in plain] if self.serde else list(plain)
        todo = [i for i, item in enumerate(encoded) if isinstance(item, StoreItem)]
        batch = [item for item in encoded if isinstance(item, StoreItem)]
        slots = [_Slot(i.payload, i.abandon) for i in batch]
        down = [OpResult(Status.UNAVAILABLE)] * len(batch)
        got = self._run("store", batch, self._store, down, OpResult(Status.FAILED), slots)
        results = [r if isinstance(r, OpResult) else OpResult(Status.FAILED) for r in encoded]
        for i, r in zip(todo, got, strict=True):
            if encoded[i] is not plain[i] and r.buffer is not None:  # an encoded copy is held, not L1's
                r = OpResult(r.status, r.reason, r.header, None)
            results[i] = r
        m = self.metrics
        for item, r in zip(plain, results, strict=True):
            if r.status is Status.OK:
                m.inc("store_ok")
                m.inc("store_bytes", nbytes_of(item.payload))
                self.bad.forget(item.key)
            elif r.status is Status.PRESENT:
                m.inc("store_present")
            elif r.status in (Status.FAILED, Status.TIMEOUT):
                m.failure("store", r.reason or "error")
                self.log.warning(f"store:{r.reason}", f"store of {item.key} failed ({r.reason})")
        return results

    def _encode(self, item: StoreItem) -> StoreItem | OpResult:
        """``item`` with its payload through the chain (the header meta records it); a FAILED
        result when a codec raised."""
        t0 = time.perf_counter()
        try:
            meta = item.meta
            got = self.serde.encode(item.payload, item.key, meta.fmt, meta.dtype, meta.shape)
        except Exception as e:  # a codec's bug or a library error: this item is not stored
            self.log.warning(
                f"encode:{type(e).__name__}", f"encoding {item.key} failed: {type(e).__name__}: {e}"
            )
            return OpResult(Status.FAILED, f"encode:{type(e).__name__}")
        self.metrics.observe("encode", time.perf_counter() - t0)
        if got is None:
            return item
        data, serde = got
        self.metrics.inc("encoded_plain_bytes", serde.plain_len)
        self.metrics.inc("encoded_bytes", data.nbytes)
        meta = ObjectMeta(meta.fmt, meta.dtype, meta.shape, meta.num_tokens, serde)
        return StoreItem(item.key, data, meta)

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is present; False for every key while the tier is unavailable, and
        for keys remembered as bad."""
        keys = list(keys)
        found = [False] * len(keys)
        todo = [i for i, k in enumerate(keys) if self.bad.reason(k) is None]
        if len(todo) < len(keys):
            self.metrics.inc("bad_key_skips", len(keys) - len(todo))
        got = self._run("lookup", [keys[i] for i in todo], self._lookup, [False] * len(todo), False)
        for i, f in zip(todo, got, strict=True):
            found[i] = bool(f) and self.bad.reason(keys[i]) is None
        hits = sum(1 for f in found if f)
        self.metrics.inc("lookup_hits", hits)
        self.metrics.inc("lookup_misses", len(keys) - hits)
        return found

    def load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        """Load a batch; a ``HIT`` result's buffer holds the verified payload."""
        requests = list(requests)
        out: list[OpResult] = [OpResult(Status.MISS, "bad_key")] * len(requests)
        todo = [i for i, r in enumerate(requests) if self.bad.reason(r.key) is None]
        if len(todo) < len(requests):
            self.metrics.inc("bad_key_skips", len(requests) - len(todo))
        decoding = [_Decoding(self.serde, requests[i]) for i in todo]
        slots = [_Slot(None, d.abandon, d.alloc) for d in decoding]
        wrapped = [LoadRequest(requests[i].key, s.alloc) for i, s in zip(todo, slots, strict=True)]
        down = [OpResult(Status.UNAVAILABLE)] * len(todo)
        got = self._run("load", wrapped, self._load, down, OpResult(Status.FAILED), slots)
        t0 = time.perf_counter()
        decoded = 0
        for i, d, r in zip(todo, decoding, got, strict=True):
            out[i] = d.finish(r)
            decoded += d.scratch is not None and r.status is Status.HIT
        if decoded:
            self.metrics.observe("decode", (time.perf_counter() - t0) / decoded, decoded)
        m = self.metrics
        for req, r in zip(requests, out, strict=True):
            if r.status is Status.HIT:
                m.inc("load_hits")
                m.inc("load_bytes", r.header.payload_len if r.header else 0)
            elif r.status in (Status.MISS, Status.REJECTED):
                m.inc("load_misses")
            elif r.status is Status.CORRUPT:
                m.inc("load_corrupt")
                m.failure("load", r.reason or "corrupt")
                self.log.warning(
                    f"corrupt:{r.reason}", f"object {req.key} rejected ({r.reason}), treated as a miss"
                )
            elif r.status is Status.UNVERIFIABLE:
                m.inc("load_unverifiable")
                m.failure("load", r.reason or "unverifiable")
                self.remember_bad(req.key, r.reason or "unverifiable")
            elif r.status in (Status.FAILED, Status.TIMEOUT):
                m.failure("load", r.reason or "error")
                self.log.warning(f"load:{r.reason}", f"load of {req.key} failed ({r.reason})")
        return out

    def delete(self, keys: Sequence[str]) -> list[bool]:
        keys = list(keys)
        done = self._run("delete", keys, self._delete, [False] * len(keys), False)
        self.metrics.inc("deletes", sum(1 for d in done if d))
        for k, d in zip(keys, done, strict=True):
            if d:
                self.bad.forget(k)
        return done

    @property
    def available(self) -> bool:
        return not self.health.down

    # ---- asynchronous API --------------------------------------------------------------------

    def submit_store(self, items: Sequence[StoreItem]) -> Future[list[OpResult]]:
        return self._submit(self.store, list(items))

    def submit_lookup(self, keys: Sequence[str]) -> Future[list[bool]]:
        return self._submit(self.lookup, list(keys))

    def submit_load(self, requests: Sequence[LoadRequest]) -> Future[list[OpResult]]:
        return self._submit(self.load, list(requests))

    def submit_delete(self, keys: Sequence[str]) -> Future[list[bool]]:
        return self._submit(self.delete, list(keys))

    def close(self, timeout: float | None = None) -> bool:
        """Stop taking calls, wait up to ``timeout`` seconds (default: ``timeout`` parameter + 1)
        for submitted batches, then release the adapter's connections. Returns within that time
        whatever the threads do; True when every thread has ended."""
        budget = self.timeout + 1.0 if timeout is None else timeout
        deadline = time.monotonic() + budget
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        ended = True
        if pool is not None:
            ended = pool.close(budget)
        ended = self._io.close(max(0.0, deadline - time.monotonic())) and ended
        try:
            self._close()
        except Exception as e:  # releasing a dead connection: nothing left to do
            logger.debug("L2 %s: close: %s: %s", self.name, type(e).__name__, e)
        if not ended:
            logger.warning("L2 %s: closed with calls still stalled (%d); left to finish on their own",
                           self.name, self._io.stuck)  # fmt: skip
        return ended

    def __enter__(self) -> L2Adapter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    # ---- internals ---------------------------------------------------------------------------

    def _submit(self, fn: Callable[[Any], R], arg: Any) -> Future[R]:
        with self._pool_lock:
            if self._closed:
                raise RuntimeError(f"{self.name}: adapter is closed")
            if self._pool is None:
                self._pool = IOPool(f"l2-{self.url.scheme}", self.in_flight, 1 << 30)
            fut: Future[R] = Future()

            def call() -> None:
                if not fut.set_running_or_notify_cancel():
                    return
                try:
                    fut.set_result(fn(arg))
                except BaseException as e:
                    fut.set_exception(e)

            try:
                self._pool.start(call)
            except RuntimeError as e:
                raise RuntimeError(f"{self.name}: adapter is closed") from e
            return fut

    def _ping_bounded(self) -> BaseException | None:
        """Run ``_ping`` under the deadline; the exception that says the tier is still down, or None."""
        try:
            finished, _ = self._io.run(self._ping, self.timeout)
        except Exception as e:
            return e
        return None if finished else TierUnavailable(f"ping passed its {self.timeout} s deadline")

    def _run(self, op: str, items: list[Any], prim: Callable[[list[Any]], list[R]], down: list[R],
             failed: R, slots: list[_Slot] | None = None) -> list[R]:  # fmt: skip
        n = len(items)
        if n == 0:
            return []
        probe = self.health.claim_probe()
        if probe is False:
            self.metrics.inc("unavailable_skips", n)
            return down
        if probe:
            err = self._ping_bounded()
            if err is not None:
                self._mark_down(err)
                self.metrics.inc("unavailable_skips", n)
                return down
            if self.health.mark_up():
                self._strikes = 0
                self.metrics.inc("reconnects")
                logger.warning("L2 %s: available again", self.name)
        results: list[Any] = [None] * n
        progress = [time.monotonic()]

        def work() -> None:
            progress[0] = time.monotonic()  # the deadline runs from when a worker takes the call
            if self.per_key:
                for i in range(n):
                    try:
                        results[i] = prim([items[i]])[0]
                    finally:
                        if slots is not None:
                            slots[i].finish()
                    progress[0] = time.monotonic()
            else:
                try:
                    got = prim(items)
                    if len(got) != n:
                        raise RuntimeError(f"{self.name}: {op} returned {len(got)} results for {n} keys")
                    results[:] = got
                finally:
                    for s in slots or ():
                        s.finish()

        t0 = time.perf_counter()
        try:
            call = self._io.start(work)
        except PoolSaturated as e:
            self._mark_down(e)
            self.metrics.inc("unavailable_skips", n)
            return down
        except RuntimeError:  # closed
            return down
        while not call.wait(max(0.0, progress[0] + self.timeout - time.monotonic())):
            if time.monotonic() - progress[0] >= self.timeout and call.abandon():
                return self._timed_out(op, items, results, slots, call.started)
        try:
            call.result()
        except TierUnavailable as e:
            self._mark_down(e)
            self.metrics.inc("unavailable_skips", n)
            return [r if r is not None else d for r, d in zip(results, down, strict=True)]
        except Exception as e:  # a bug or an unexpected error: fail this batch only, loudly once
            reason = reason_of(e)
            self.metrics.failure(op, reason, n)
            self.log.warning(f"{op}:{reason}", f"{op} of {n} keys failed: {type(e).__name__}: {e}")
            return [r if r is not None else failed for r in results]
        self._strikes = 0
        self.metrics.observe(op, time.perf_counter() - t0, n)
        return results

    def _timed_out(
        self, op: str, items: list[Any], results: list[Any], slots: list[_Slot] | None, started: bool
    ) -> list[Any]:
        """Results of a call abandoned at its deadline: keys finished before it keep theirs. A
        call that never left the queue (every worker busy) remembers no key as bad."""
        out: list[Any] = []
        stalled: str | None = None
        missed = 0
        for i, item in enumerate(items):
            if slots is not None:
                r = slots[i].cancel()
                if r is None:  # finished in between
                    out.append(results[i])
                    continue
            elif results[i] is not None:
                out.append(results[i])
                continue
            else:
                r = OpResult(Status.TIMEOUT, "deadline")
            missed += 1
            if stalled is None and self.per_key and started:
                stalled = item if isinstance(item, str) else item.key
            out.append(False if op in ("lookup", "delete") else r)
        self.metrics.inc("timeouts")
        if op in ("lookup", "delete"):  # store and load count their TIMEOUT results themselves
            self.metrics.failure(op, "deadline", missed)
        self.log.warning(
            f"{op}:deadline", f"{op} passed its {self.timeout} s deadline; {missed} key(s) missed"
        )
        if stalled is not None:
            self.remember_bad(stalled, "deadline")
        self._strikes += 1
        if self._strikes >= self.timeout_strikes:
            self._strikes = 0
            self._mark_down(TierUnavailable(f"{self.timeout_strikes} calls in a row passed their deadline"))
        return out

    def _mark_down(self, exc: BaseException) -> None:
        newly, delay = self.health.mark_down()
        if newly:
            self.metrics.inc("unavailable_events")
            logger.warning(
                "L2 %s: unavailable (%s: %s); serving without it, retrying in %.1f s",
                self.name, type(exc).__name__, exc, delay,
            )  # fmt: skip
        else:
            logger.debug("L2 %s: still unavailable (%s); next try in %.1f s", self.name, exc, delay)
