"""``lmcache-core bench l2`` through its parser: JSON with verify and peer, progress, bad options.

The measuring library (peers on Redis, the keyword checks) is tested in tests/bench/test_l2.py.
"""

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
    assert doc["host"]["cpu_model"] and doc["date"].endswith("+00:00")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith(".evict")]
    assert "[3/4 " in out.err and "round 3/3" in out.err and "[4/4 " in out.err  # the progress display


def test_fs_table_without_peer_or_progress(tmp_path, capsys):
    out = bench(capsys, "--adapter", f"fs://{tmp_path}", "--num-keys", "2", "--object-size", "4K", "--rounds", "1",
                "--warmup-rounds", "0", "--no-peer", "--no-progress")  # fmt: skip
    lines = out.out.splitlines()
    assert lines[1].startswith("2 keys x 4096 B, in-flight 2, batch 1, 1 rounds (+0 warm-up)")
    assert [line.split()[0] for line in lines[5:8]] == ["store", "lookup", "load"]
    assert "ours / peer" not in out.out and "\npeer: " not in out.out and out.err == ""


def test_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "fs:///x", "--object-size", "huge"])
    assert "--object-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "fs:///x", "--rounds", "0"])
    assert "argument --rounds: expected a positive integer, given '0'" in capsys.readouterr().err
    args = build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "nfs://x/y"])
    with pytest.raises(CLIError, match="unknown L2 scheme 'nfs'"):
        args.run(args)
    args = build_parser(COMMANDS).parse_args(["bench", "l2", "--adapter", "redis://127.0.0.1:1/0", "--cold"])
    with pytest.raises(CLIError, match=r"^--cold: only for fs:// adapters, given redis://$"):
        args.run(args)
