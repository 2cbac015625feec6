import json

import pytest

from lmcache_core.cli.errors import CLIError
from lmcache_core.cli.main import build_parser

COMMANDS = {"bench l2": "lmcache_core.cli.bench_l2"}


def bench(capsys, *argv):
    args = build_parser(COMMANDS).parse_args(["bench", "l2", *argv])
    assert args.run(args) == 0
    return capsys.readouterr()


def test_fs_json_with_verify_and_peer(tmp_path, capsys):
    out = bench(capsys, "--adapter", f"fs://{tmp_path}", "--num-keys", "6", "--object-size", "64K", "--rounds",
                "2", "--warmup-rounds", "1", "--verify", "--json")  # fmt: skip
    doc = json.loads(out.out)
    assert doc["params"] == {"num_keys": 6, "object_size": 65536, "in_flight": 2, "batch_size": 3, "rounds": 2,
                             "warmup_rounds": 1, "cold": False}  # fmt: skip
    assert doc["verified_objects"] == 18
    for op in ("store", "lookup", "load"):
        r = doc["results"][op]
        assert r["failures"] == 0 and r["rounds"] == 2
        assert r["mb_per_s"]["min"] <= r["mb_per_s"]["median"] <= r["mb_per_s"]["max"]
        assert 0 < r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
    assert len(doc["peer"]["write_mb_per_s"]) == 2 and doc["ratios"]["load_vs_peer_read"] > 0
    assert doc["adapter_counters"]["store_ok"] == 18 and doc["adapter_counters"]["load_hits"] == 18
    assert doc["adapter_counters"]["deletes"] == 18  # each round cleans up after itself
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".evict")]
    assert "round 3/3" in out.err  # the progress display


def test_redis_table_and_cold_is_fs_only(redis_server, capsys):
    out = bench(capsys, "--adapter", f"{redis_server.url}?prefix=bench:", "--num-keys", "4", "--object-size",
                "10K", "--rounds", "1", "--no-progress")  # fmt: skip
    assert "plain redis-py pipelined SET / GET" in out.out and "ours / peer" in out.out
    assert out.err == ""
    args = build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", redis_server.url, "--cold"])
    with pytest.raises(CLIError, match="--cold: only for fs"):
        args.run(args)


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "fs:///x", "--object-size", "huge"])
    assert "--object-size" in capsys.readouterr().err
    args = build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "nfs://x/y"])
    with pytest.raises(CLIError, match="unknown L2 scheme 'nfs'"):
        args.run(args)
