"""The L2 bench as a library: a real fs directory and a real redis-server, each next to its peer."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.bench.l2 import make_payloads, measure, percentile
from lmcache_core.cli.bench_l2 import render


def test_percentile_interpolates_and_is_nan_without_values() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert math.isnan(percentile([], 50))


def test_payloads_differ_by_their_key_index_only() -> None:
    a, b = make_payloads(2, 64, seed=0)
    assert a.nbytes == b.nbytes == 64 and int.from_bytes((a ^ b)[:8].tobytes(), "little") == 1
    assert (a[8:] == b[8:]).all()


def test_fs_measure_verifies_every_byte_and_reports_without_printing(tmp_path: Path, capsys: Any) -> None:
    doc = measure(f"fs://{tmp_path}", num_keys=4, object_size=8192, rounds=1, warmup_rounds=0, verify=True)
    assert doc["verified_objects"] == 4 and doc["params"]["batch_size"] == 2
    assert doc["results"]["load"]["failures"] == 0 and doc["adapter_counters"]["load_hits"] == 4
    assert doc["peer"]["what"] == "raw sequential os.write / os.readv, same dir"
    assert capsys.readouterr() == ("", "")


def test_redis_peer_and_its_table(redis_server: Any) -> None:
    doc = measure(f"{redis_server.url}?prefix=bench:", num_keys=4, object_size=10_000, rounds=1, verify=True)
    assert doc["peer"]["what"] == "plain redis-py pipelined SET / GET"
    assert len(doc["peer"]["read_mb_per_s"]) == 1
    assert doc["verified_objects"] == 8 and doc["ratios"]["store_vs_peer_write"] > 0
    text = render(doc)
    assert "plain redis-py pipelined SET / GET" in text and "ours / peer" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_keys": 0}, "num_keys: expected an integer >= 1, given 0"),
        ({"object_size": -1}, "object_size: expected an integer >= 1, given -1"),
        ({"warmup_rounds": -1}, "warmup_rounds: expected an integer >= 0, given -1"),
        ({"batch_size": 1.5}, "batch_size: expected an integer >= 1, given 1.5"),
        ({"cold": True}, "cold: only for fs:// adapters, given redis://"),
    ],
)
def test_bad_keywords_raise_value_error_naming_them(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        measure("redis://127.0.0.1:1/0", **kwargs)
    assert str(info.value) == message
