"""The connector's counters: interval recording, addition, summaries."""

from __future__ import annotations

import pytest

from lmcache_core.integrations.vllm import stats


def test_recorder_intervals_and_totals() -> None:
    r = stats.StatsRecorder()
    assert r.take() is None
    r.inc(lookups=1, lookup_tokens=1000, matched_tokens=750)
    r.inc(loaded_bytes=2_000_000_000, load_seconds=0.5)
    r.load_duration(0.5)
    got = r.take()
    assert got is not None and got["matched_tokens"] == 750 and got[stats.DURATIONS] == [0.5]
    assert r.take() is None  # a new interval
    r.inc(lookups=2)
    assert r.totals()["lookups"] == 3
    s = stats.reduce(got)
    assert s["hit_rate"] == 0.75 and s["load_GBps"] == 4.0 and s["load_ms_avg"] == 500.0
    with pytest.raises(ValueError, match=r"counter: expected one of \[.*\], given 'hits'"):
        r.inc(hits=1)


def test_add_is_per_counter_and_keeps_the_newest_durations() -> None:
    a, b = stats.empty(), stats.empty()
    a["loads"], b["loads"] = 2, 3
    a[stats.DURATIONS] = [0.1] * stats.MAX_DURATIONS
    b[stats.DURATIONS] = [0.2]
    s = stats.add(a, b)
    assert (
        s["loads"] == 5 and len(s[stats.DURATIONS]) == stats.MAX_DURATIONS and s[stats.DURATIONS][-1] == 0.2
    )
    assert stats.is_empty(stats.empty()) and not stats.is_empty(s)
