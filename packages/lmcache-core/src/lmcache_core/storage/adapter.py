"""The L2 adapter interface: batched, thread-safe, non-blocking through futures.

An adapter stores whole chunk objects (:mod:`~lmcache_core.storage.object_format`) under string
keys in one tier (a directory, a Redis database, an S3 prefix). Subclasses implement four
synchronous batch primitives; this base class adds, for every adapter alike:

* ``submit_store / submit_lookup / submit_load / submit_delete``: run a batch on the adapter's
  own worker threads (``in_flight`` of them) and return a ``concurrent.futures.Future`` with
  one result per key, in order. ``store / lookup / load / delete`` are the same, run in the
  calling thread. Collect many futures with :func:`concurrent.futures.wait`.
* health: a :class:`TierUnavailable` from a primitive (connection refused, timeout) marks the
  whole tier unavailable; until the back-off (doubling from ``retry_min`` to ``retry_max``
  seconds) has passed every call answers at once without I/O (misses, ``UNAVAILABLE`` results),
  then one caller probes with ``_ping`` and the tier is back when that succeeds.
* counting into :class:`~lmcache_core.storage.metrics.TierMetrics` and one rate-limited log line
  per kind of failure (no tracebacks; the count of suppressed lines is in the next one).

Per-key failures that leave the tier usable (disk full, permission denied, an object over a
server's size limit) come back as ``FAILED`` results with a short reason (``ENOSPC``, ``EACCES``).

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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

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
    REJECTED = "rejected"  # there, but the caller's alloc declined it (other format or size)
    FAILED = "failed"  # an error for this key; the tier stays usable
    UNAVAILABLE = "unavailable"  # the tier is down


@dataclass(frozen=True)
class StoreItem:
    """One object to store: its key, payload buffer (``payload_len`` bytes) and what it is."""

    key: str
    payload: Any
    meta: ObjectMeta


@dataclass(frozen=True)
class LoadRequest:
    """One object to load. ``alloc(header)`` returns a writable buffer of exactly
    ``header.payload_len`` bytes to load the payload into, or None to decline the object."""

    key: str
    alloc: Callable[[ObjectHeader], Any]


@dataclass(frozen=True)
class OpResult:
    """Result of one key of a store or load. For a ``HIT``: the header and the filled buffer."""

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


class L2Adapter(abc.ABC):
    """Base of every L2 adapter. Construct through :func:`lmcache_core.storage.open_adapter`.

    Common URL parameters: ``checksum`` (``xxh3`` or ``crc32``; default xxh3 when the xxhash
    package is installed), ``in_flight`` (worker threads for ``submit_*``, default 4),
    ``retry_min`` / ``retry_max`` (reconnect back-off in seconds, default 0.5 and 30),
    ``log_interval`` (seconds between repeated log lines of one kind, default 30).
    """

    #: URL schemes this class serves (documentation; the entry point names decide).
    schemes: ClassVar[tuple[str, ...]] = ()

    def __init__(self, url: L2URL) -> None:
        self.url = url
        self.name = url.redacted
        algo = url.text_param("checksum", "")
        self.algorithm = parse_algorithm(algo) if algo else default_algorithm()
        self.in_flight = url.int_param("in_flight", 4, minimum=1)
        self.metrics = TierMetrics(self.name)
        self.health = Health(url.float_param("retry_min", 0.5), url.float_param("retry_max", 30.0))
        self.log = RateLimitedLog(self.name, url.float_param("log_interval", 30.0))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._closed = False
        self.metrics.gauge("available", lambda: 0.0 if self.health.down else 1.0)

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
        ``REJECTED`` or ``FAILED``). A corrupt object should be deleted."""

    @abc.abstractmethod
    def _delete(self, keys: Sequence[str]) -> list[bool]:
        """Delete each key; True when something was deleted."""

    def _ping(self) -> None:
        """Raise TierUnavailable unless the tier answers (used to come back after being down)."""
        return None

    def _close(self) -> None:
        """Release connections and files."""
        return None

    # ---- synchronous API (thread-safe) -------------------------------------------------------

    def store(self, items: Sequence[StoreItem]) -> list[OpResult]:
        """Store a batch; one result per item, in order."""
        items = list(items)
        down = [OpResult(Status.UNAVAILABLE)] * len(items)
        results = self._run("store", len(items), lambda: self._store(items), down, OpResult(Status.FAILED))
        m = self.metrics
        for item, r in zip(items, results, strict=True):
            if r.status is Status.OK:
                m.inc("store_ok")
                m.inc("store_bytes", nbytes_of(item.payload))
            elif r.status is Status.PRESENT:
                m.inc("store_present")
            elif r.status is Status.FAILED:
                m.failure("store", r.reason or "error")
                self.log.warning(f"store:{r.reason}", f"store of {item.key} failed ({r.reason})")
        return results

    def lookup(self, keys: Sequence[str]) -> list[bool]:
        """Whether each key is present; False for every key while the tier is unavailable."""
        keys = list(keys)
        found = self._run("lookup", len(keys), lambda: self._lookup(keys), [False] * len(keys), False)
        hits = sum(1 for f in found if f)
        self.metrics.inc("lookup_hits", hits)
        self.metrics.inc("lookup_misses", len(keys) - hits)
        return found

    def load(self, requests: Sequence[LoadRequest]) -> list[OpResult]:
        """Load a batch; a ``HIT`` result's buffer holds the verified payload."""
        requests = list(requests)
        down = [OpResult(Status.UNAVAILABLE)] * len(requests)
        results = self._run(
            "load", len(requests), lambda: self._load(requests), down, OpResult(Status.FAILED)
        )
        m = self.metrics
        for req, r in zip(requests, results, strict=True):
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
            elif r.status is Status.FAILED:
                m.failure("load", r.reason or "error")
                self.log.warning(f"load:{r.reason}", f"load of {req.key} failed ({r.reason})")
        return results

    def delete(self, keys: Sequence[str]) -> list[bool]:
        keys = list(keys)
        done = self._run("delete", len(keys), lambda: self._delete(keys), [False] * len(keys), False)
        self.metrics.inc("deletes", sum(1 for d in done if d))
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

    def close(self) -> None:
        """Wait for submitted batches, then release the adapter's threads and connections."""
        with self._pool_lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        self._close()

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
                self._pool = ThreadPoolExecutor(self.in_flight, thread_name_prefix=f"l2-{self.url.scheme}")
            return self._pool.submit(fn, arg)

    def _run(self, op: str, n: int, fn: Callable[[], list[R]], down: list[R], failed: R) -> list[R]:
        if n == 0:
            return []
        probe = self.health.claim_probe()
        if probe is False:
            self.metrics.inc("unavailable_skips", n)
            return down
        if probe:
            try:
                self._ping()
            except Exception as e:
                self._mark_down(e)
                self.metrics.inc("unavailable_skips", n)
                return down
            if self.health.mark_up():
                self.metrics.inc("reconnects")
                logger.warning("L2 %s: available again", self.name)
        t0 = time.perf_counter()
        try:
            results = fn()
        except TierUnavailable as e:
            self._mark_down(e)
            self.metrics.inc("unavailable_skips", n)
            return down
        except Exception as e:  # a bug or an unexpected error: fail this batch only, loudly once
            reason = reason_of(e)
            self.metrics.failure(op, reason, n)
            self.log.warning(f"{op}:{reason}", f"{op} of {n} keys failed: {type(e).__name__}: {e}")
            return [failed] * n
        self.metrics.observe(op, time.perf_counter() - t0, n)
        if len(results) != n:
            raise RuntimeError(f"{self.name}: {op} returned {len(results)} results for {n} keys")
        return results

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
