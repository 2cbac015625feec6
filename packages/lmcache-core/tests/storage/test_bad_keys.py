import time

from lmcache_core.storage.bad_keys import BadKeys


def test_bounded_lru_with_expiry():
    bad = BadKeys(capacity=3, ttl=0.2)
    assert [bad.add(k, "r") for k in "abcd"] == [True] * 4
    assert len(bad) == 3 and bad.reason("a") is None  # the oldest went first
    assert [bad.reason(k) for k in "bcd"] == ["r"] * 3
    assert bad.add("b", "again") is False and bad.reason("b") == "again"
    bad.forget("c")
    assert bad.reason("c") is None
    time.sleep(0.25)
    assert bad.reason("b") is None and bad.reason("d") is None  # damage is tried again later


def test_zero_capacity_remembers_nothing():
    bad = BadKeys(capacity=0, ttl=10)
    assert bad.add("k", "r") is False and bad.reason("k") is None and len(bad) == 0
