"""``lmcache-core bench server --quick``: runs a server and workers, and its document has every cell."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'lmcache-core[server]'")

from lmcache_core.cli.bench_server import render


def test_quick_run_document_and_table() -> None:
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "bench", "server", "--quick", "--clients", "1",
                          "--json", "--no-progress"], capture_output=True, text=True, timeout=240)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    doc = json.loads(out.stdout)
    (row,) = doc["results"]
    assert row["clients"] == 1
    for mode in ("server", "inproc"):
        cell = row[mode]
        assert (
            cell["stored_bytes"] == doc["params"]["prompts"] * doc["prompt_bytes"]
        )  # the workers checked the bytes
        assert (
            cell["store_gbps"] > 0
            and cell["retrieve_gbps"] > 0
            and 0 < cell["lookup_p50_ms"] <= cell["lookup_p99_ms"]
        )
    assert set(row["ratio"]) == {"store_gbps", "retrieve_gbps"}
    assert {"ratio_met", "lookup_met", "ratio_worst", "lookup_p99_ms_worst"} <= set(doc["targets"])
    table = render(doc)
    assert "store GB/s server" in table and "targets: ratio >= 0.8" in table


def test_bad_clients_option() -> None:
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "bench", "server", "--clients", "0,x"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--clients: expected counts like 1,2,4" in out.stderr
