"""The connector's counters: what each side records, how intervals add up, what is exported.

vLLM collects connector stats every step from each worker (``get_kv_connector_stats``) and from
the scheduler, adds them (``aggregate``), and hands the sum to its loggers and to Prometheus
(``build_prom_metrics``). The payload is a plain ``dict`` (picklable, sent between processes):
numbers under :data:`COUNTERS`, and a list of per-load seconds under ``load_durations_s``.

Scheduler side: ``lookups``, ``lookup_tokens`` (prompt tokens looked up), ``hit_tokens`` (cached
tokens past what vLLM holds), ``matched_tokens`` (tokens handed to vLLM to load), of which
``l1_matched_tokens`` / ``l2_matched_tokens``, ``declined_tokens`` (hit but cheaper to
recompute), ``lookup_errors`` (a worker did not answer). Worker side: ``loads``, ``async_loads``,
``loaded_tokens``, ``loaded_bytes``, ``load_seconds``, ``load_failed_tokens``,
``load_failed_blocks``, ``stores``, ``stored_tokens``, ``stored_bytes``, ``store_seconds``.
Worker numbers are summed over tensor-parallel ranks (bytes and seconds of every rank).
"""

from __future__ import annotations

import threading
from typing import Any

COUNTERS: dict[str, str] = {
    "lookups": "prompts looked up by the scheduler",
    "lookup_tokens": "prompt tokens looked up",
    "hit_tokens": "cached tokens found past what vLLM already held",
    "matched_tokens": "cached tokens handed to vLLM to load",
    "l1_matched_tokens": "matched tokens found in L1 (host memory)",
    "l2_matched_tokens": "matched tokens found in an L2 tier",
    "declined_tokens": "hit tokens recomputed because loading them was estimated slower",
    "lookup_errors": "lookups a worker did not answer (treated as misses)",
    "loads": "requests whose cached prefix was loaded",
    "async_loads": "loads run off the step (vLLM kept stepping other requests meanwhile)",
    "loaded_tokens": "tokens loaded into vLLM's KV (summed over ranks)",
    "loaded_bytes": "bytes loaded into vLLM's KV (summed over ranks)",
    "load_seconds": "seconds spent loading (summed over ranks)",
    "load_failed_tokens": "tokens that failed to load and were handed back to vLLM to recompute",
    "load_failed_blocks": "vLLM blocks reported through get_block_ids_with_load_errors",
    "stores": "store calls (one per request and step that completed new chunks)",
    "stored_tokens": "tokens newly stored (summed over ranks)",
    "stored_bytes": "bytes newly stored (summed over ranks)",
    "store_seconds": "seconds spent storing (summed over ranks)",
}
DURATIONS = "load_durations_s"
MAX_DURATIONS = 4096


def empty() -> dict[str, Any]:
    d: dict[str, Any] = dict.fromkeys(COUNTERS, 0)
    d[DURATIONS] = []
    return d


def add(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a + b`` counter by counter (durations concatenated, the newest kept); a new dict."""
    out = empty()
    for k in COUNTERS:
        out[k] = a.get(k, 0) + b.get(k, 0)
    out[DURATIONS] = (list(a.get(DURATIONS, [])) + list(b.get(DURATIONS, [])))[-MAX_DURATIONS:]
    return out


def is_empty(d: dict[str, Any]) -> bool:
    return not any(d.get(k, 0) for k in COUNTERS) and not d.get(DURATIONS)


def reduce(d: dict[str, Any]) -> dict[str, int | float]:
    """The interval's summary for vLLM's log line: counters, hit rate and load bandwidth."""
    out: dict[str, int | float] = {k: d.get(k, 0) for k in COUNTERS if d.get(k, 0)}
    if d.get("lookup_tokens"):
        out["hit_rate"] = round(d.get("matched_tokens", 0) / d["lookup_tokens"], 4)
    if d.get("load_seconds"):
        out["load_GBps"] = round(d.get("loaded_bytes", 0) / d["load_seconds"] / 1e9, 3)
    durations = d.get(DURATIONS) or []
    if durations:
        out["load_ms_avg"] = round(1e3 * sum(durations) / len(durations), 3)
    return out


class StatsRecorder:
    """Counters of one side for the current interval; ``take()`` returns and resets them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data = empty()
        self._total = empty()

    def inc(self, **counts: float) -> None:
        with self._lock:
            for k, v in counts.items():
                if k not in COUNTERS:
                    raise ValueError(f"counter: expected one of {sorted(COUNTERS)}, given {k!r}")
                self._data[k] += v
                self._total[k] += v

    def load_duration(self, seconds: float) -> None:
        with self._lock:
            if len(self._data[DURATIONS]) < MAX_DURATIONS:
                self._data[DURATIONS].append(seconds)

    def take(self) -> dict[str, Any] | None:
        """This interval's counters (None when nothing happened), and start a new interval."""
        with self._lock:
            if is_empty(self._data):
                return None
            data, self._data = self._data, empty()
            return data

    def totals(self) -> dict[str, Any]:
        """Counters since the connector started (durations not kept)."""
        with self._lock:
            return {k: self._total[k] for k in COUNTERS}
