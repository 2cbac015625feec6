"""Repeated timing: warm-up runs are not counted, every timed run is synchronized, stats are right."""

from __future__ import annotations

import pytest

from lmcache_core.bench.timing import Stats, measure_gbps


def test_stats_summarize_and_describe() -> None:
    s = Stats.of([3.0, 1.0, 2.0])
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 3.0, 3)
    assert s.describe() == "2.00 (1.00-3.00)"
    assert s.to_json() == {"median": 2.0, "min": 1.0, "max": 3.0, "runs": 3}
    with pytest.raises(ValueError, match="values"):
        Stats.of([])


def test_measure_counts_only_timed_runs_and_syncs_around_each() -> None:
    events: list[str] = []
    stats = measure_gbps(
        lambda i: events.append(f"run{i}"),
        lambda: events.append("sync"),
        nbytes=10**6,
        repeats=2,
        warmup=1,
        on_repeat=lambda i: events.append(f"repeat{i}"),
    )
    assert events == [e for i in range(3) for e in (f"repeat{i}", "sync", f"run{i}", "sync")]
    assert stats.runs == 2 and 0 < stats.min <= stats.median <= stats.max
    with pytest.raises(ValueError, match="repeats"):
        measure_gbps(events.append, lambda: None, nbytes=1, repeats=0)
