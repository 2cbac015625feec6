"""Per-tier counters and latency histograms, and their export with prometheus-client.

Every tier (each L2 adapter, plus the write-behind queue in front of it) counts into one
:class:`TierMetrics`. Counting is plain Python under a lock, so it works without any optional
package; :func:`register_prometheus` exposes the same numbers through a prometheus-client
collector that reads them at scrape time (no double bookkeeping, no global state).

Latencies are per key, in seconds: a key's latency is the time its batch took, queueing inside
the adapter included.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Histogram bucket upper bounds in seconds (10 us .. 10 s, roughly x2.5 apart), then +Inf.
LATENCY_BUCKETS = (
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip

OPS = ("store", "lookup", "load", "delete", "encode", "decode")


@dataclass
class Histogram:
    """Cumulative-style histogram: ``counts[i]`` observations <= ``LATENCY_BUCKETS[i]``, last is +Inf."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    n: int = 0

    def observe(self, seconds: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += times
        self.total += seconds * times
        self.n += times

    def cumulative(self) -> list[tuple[str, int]]:
        out, acc = [], 0
        for bound, c in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts, strict=True):
            acc += c
            out.append((bound, acc))
        return out

    def copy(self) -> Histogram:
        return Histogram(list(self.counts), self.total, self.n)


class TierMetrics:
    """Thread-safe counters of one tier, named by ``tier`` (its URL without secrets).

    Counters (``inc(name, n)``): ``store_ok``, ``store_present`` (already there),
    ``store_failed``, ``store_bytes``, ``lookup_hits``, ``lookup_misses``, ``load_hits``,
    ``load_misses``, ``load_corrupt``, ``load_failed``, ``load_bytes``, ``deletes``,
    ``unavailable_skips`` (ops answered without I/O while the tier is marked down),
    ``unavailable_events``, ``reconnects``, ``evictions``, ``evicted_bytes``,
    ``write_queued``, ``write_dropped`` (queue full), ``prefetch_issued``, ``load_unverifiable``,
    ``timeouts``, ``bad_keys_added``, ``bad_key_skips``, ``wrong_type``, ``damage_found``,
    ``read_only_events``, ``shard_failures``, ``stale_removed``; failures also by reason
    (``failures_by_reason``). Gauges are callables read at snapshot time (queue depth, ...).
    """

    def __init__(self, tier: str) -> None:
        self.tier = tier
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._reasons: Counter[tuple[str, str]] = Counter()
        self._hist = {op: Histogram() for op in OPS}
        self._gauges: dict[str, Callable[[], float]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def failure(self, op: str, reason: str, n: int = 1) -> None:
        with self._lock:
            self._counts[f"{op}_failed"] += n
            self._reasons[(op, reason)] += n

    def observe(self, op: str, seconds: float, keys: int = 1) -> None:
        with self._lock:
            self._hist[op].observe(seconds, keys)

    def gauge(self, name: str, read: Callable[[], float]) -> None:
        self._gauges[name] = read

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> TierSnapshot:
        with self._lock:
            counts = dict(self._counts)
            reasons = {f"{op}:{r}": n for (op, r), n in self._reasons.items()}
            hist = {op: h.copy() for op, h in self._hist.items()}
        gauges = {name: float(read()) for name, read in self._gauges.items()}
        return TierSnapshot(self.tier, counts, reasons, hist, gauges)


@dataclass(frozen=True)
class TierSnapshot:
    """A copy of one tier's metrics at one moment."""

    tier: str
    counts: dict[str, int]
    failures_by_reason: dict[str, int]
    latency: dict[str, Histogram]
    gauges: dict[str, float]

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def to_json(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "counts": dict(self.counts),
            "failures_by_reason": dict(self.failures_by_reason),
            "gauges": dict(self.gauges),
            "latency_seconds": {
                op: {"count": h.n, "sum": h.total, "buckets": h.cumulative()}
                for op, h in self.latency.items()
            },
        }


_COUNTER_HELP = {
    "store_ok": "chunks written to the tier",
    "store_present": "stores skipped because the object was already there",
    "store_failed": "stores that failed (see lmcache_l2_failures_total for reasons)",
    "store_bytes": "payload bytes written",
    "lookup_hits": "keys found by lookups",
    "lookup_misses": "keys not found by lookups",
    "load_hits": "chunks loaded and verified",
    "load_misses": "loads of absent keys",
    "load_corrupt": "objects rejected by the header or checksum check (treated as misses)",
    "load_failed": "loads that failed with an error",
    "load_bytes": "payload bytes loaded",
    "deletes": "objects deleted",
    "unavailable_skips": "keys answered without I/O while the tier was marked unavailable",
    "unavailable_events": "times the tier was marked unavailable",
    "reconnects": "times the tier came back after being unavailable",
    "evictions": "objects evicted to keep the byte budget",
    "evicted_bytes": "bytes evicted to keep the byte budget",
    "write_queued": "chunks queued for write-behind",
    "write_dropped": "write-behind stores dropped because the queue was full",
    "prefetch_issued": "chunks whose L2 -> L1 prefetch was started",
    "load_unverifiable": "objects this reader cannot judge (foreign format, newer version, checksum): misses, kept",
    "timeouts": "tier calls that passed their deadline",
    "bad_keys_added": "keys remembered as bad (damage that was not removed)",
    "bad_key_skips": "lookups and loads answered as misses from the bad-key memory, without I/O",
    "wrong_type": "Redis values of another type found under a key",
    "damage_found": "links, FIFOs, directories or non-directories where the fs tier expects its own entries",
    "read_only_events": "times the tier found it cannot write and went read-only",
    "shard_failures": "fs shard directories that could not be made",
    "stale_removed": "temporary files of gone writers and old tombstones removed by a scan",
}


class PrometheusCollector:
    """A prometheus-client collector over ``sources`` (callables returning TierSnapshots)."""

    def __init__(self, sources: Callable[[], Iterable[TierSnapshot]], prefix: str = "lmcache_l2") -> None:
        self._sources = sources
        self._prefix = prefix

    def describe(self) -> list[Any]:
        return []  # collected lazily: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        snaps = list(self._sources())
        p = self._prefix
        for name, help_text in _COUNTER_HELP.items():
            fam = CounterMetricFamily(f"{p}_{name}", help_text, labels=["tier"])
            for s in snaps:
                fam.add_metric([s.tier], float(s[name]))
            yield fam
        fam = CounterMetricFamily(
            f"{p}_failures", "failures by operation and reason", labels=["tier", "op", "reason"]
        )
        for s in snaps:
            for opr, n in s.failures_by_reason.items():
                op, reason = opr.split(":", 1)
                fam.add_metric([s.tier, op, reason], float(n))
        yield fam
        gauge_names = sorted({g for s in snaps for g in s.gauges})
        for g in gauge_names:
            gfam = GaugeMetricFamily(f"{p}_{g}", g.replace("_", " "), labels=["tier"])
            for s in snaps:
                if g in s.gauges:
                    gfam.add_metric([s.tier], s.gauges[g])
            yield gfam
        hfam = HistogramMetricFamily(f"{p}_latency_seconds", "per-key latency of tier operations",
                                     labels=["tier", "op"])  # fmt: skip
        for s in snaps:
            for op, h in s.latency.items():
                hfam.add_metric([s.tier, op], buckets=h.cumulative(), sum_value=h.total)
        yield hfam


def register_prometheus(
    sources: Callable[[], Iterable[TierSnapshot]], registry: Any = None
) -> PrometheusCollector:
    """Register a collector for ``sources`` in ``registry`` (default: prometheus-client's global one).

    Needs the optional ``prometheus-client`` package (``pip install lmcache-core[metrics]``).
    """
    try:
        from prometheus_client import REGISTRY
    except ImportError:
        raise ImportError(
            "register_prometheus: needs prometheus-client; install it with pip install 'lmcache-core[metrics]'"
        ) from None
    collector = PrometheusCollector(sources)
    (REGISTRY if registry is None else registry).register(collector)
    return collector
