"""``lmcache-core bench server``: store/retrieve GB/s and lookup latency through the cache server,
beside the in-process CacheEngine on the same data, in the same run.

For each client count N (default 1, 2, 4): N worker processes
(:mod:`lmcache_core.bench.server_worker`) each hold their own paged KV (torch, CPU, the
``vllm_flash_nhd`` layout) and run three phases in lock-step (a barrier on their stdin between
phases): store ``prompts`` distinct prompts, retrieve them all into a second KV, look each up
``lookups`` times. Once against one ``lmcache-core serve`` process (shared-memory L1: the worker's
backend gathers into and scatters from the server's slots), once with a CacheEngine in each
worker (private L1); the two alternate round by round, so load from elsewhere on the host hits
both alike. GB/s of a phase = all workers' chunk bytes / (last end - first start).
Every worker checks that what it retrieved equals what it stored, byte for byte.

Targets (issue 15): the shared-memory path at >= 0.8x in-process throughput; lookup p99 < 1 ms.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

TARGET_RATIO = 0.8
TARGET_LOOKUP_P99_MS = 1.0


@dataclass(frozen=True)
class Params:
    """``tokens`` per prompt, ``prompts`` per worker, KV ``layers`` x ``heads`` x ``head_dim`` of
    ``dtype``, ``chunk_size`` tokens a chunk, ``lookups`` per prompt, ``rounds`` of the whole
    measurement (medians reported)."""

    tokens: int = 2048
    prompts: int = 4
    layers: int = 8
    heads: int = 8
    head_dim: int = 128
    dtype: str = "float16"
    chunk_size: int = 256
    lookups: int = 100
    rounds: int = 3
    block_size: int = 16

    def __post_init__(self) -> None:
        for name in (
            "tokens",
            "prompts",
            "layers",
            "heads",
            "head_dim",
            "chunk_size",
            "lookups",
            "rounds",
            "block_size",
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"dtype: expected float16, bfloat16 or float32, given {self.dtype!r}")

    @property
    def element_size(self) -> int:
        return 4 if self.dtype == "float32" else 2

    @property
    def prompt_bytes(self) -> int:
        """Chunk bytes of one prompt: K and V of every layer."""
        return self.tokens * self.layers * 2 * self.heads * self.head_dim * self.element_size


class BenchError(RuntimeError):
    """A worker or the server failed; the message carries its output."""


class _Worker:
    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmcache_core.bench.server_worker", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def expect(self, word: str) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(word):
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise BenchError(f"worker: expected {word!r}, got {line!r}\n{err[-3000:]}")
        rest = line[len(word) :].strip()
        return json.loads(rest) if rest else {}

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _run_workers(n: int, mode: str, p: Params, endpoint: str) -> dict[str, Any]:
    """One measurement with ``n`` workers in ``mode`` (``server`` or ``inproc``)."""
    workers = [_Worker([mode, endpoint, str(i), json.dumps(asdict(p))]) for i in range(n)]
    try:
        for w in workers:
            w.expect("ready")
        phases: dict[str, list[dict[str, Any]]] = {}
        for phase in ("store", "retrieve", "lookup"):
            for w in workers:
                w.go()
            phases[phase] = [w.expect(phase) for w in workers]
        for w in workers:
            w.go()
            w.expect("done")
    finally:
        for w in workers:
            w.stop()

    def gbps(rows: list[dict[str, Any]]) -> float:
        span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
        return sum(r["bytes"] for r in rows) / span / 1e9

    lat = sorted(x for r in phases["lookup"] for x in r["latencies"])
    return {
        "store_gbps": gbps(phases["store"]),
        "retrieve_gbps": gbps(phases["retrieve"]),
        "lookup_p50_ms": 1e3 * lat[len(lat) // 2],
        "lookup_p99_ms": 1e3 * lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        "stored_bytes": sum(r["bytes"] for r in phases["store"]),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def measure(
    params: Params,
    clients: Sequence[int] = (1, 2, 4),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the benchmark (see the module docstring); returns the results document."""
    if not clients or any(isinstance(c, bool) or not isinstance(c, int) or c <= 0 for c in clients):
        raise ValueError(f"clients: expected positive ints, given {list(clients)!r}")
    say = progress or (lambda _m: None)
    l1 = max(clients) * params.prompt_bytes * params.prompts * 2 + 2**26
    sock_dir = tempfile.mkdtemp(prefix="lmcache-bench-")
    shm_dir = tempfile.mkdtemp(
        prefix="lmcache-bench-shm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    )
    endpoint = f"ipc://{sock_dir}/server.sock"
    log_path = os.path.join(sock_dir, "server.log")
    log = open(log_path, "w")  # closed in finally; a file never blocks the server as a full pipe can
    server = subprocess.Popen(
        [sys.executable, "-m", "lmcache_core.cli.main", "serve", "--listen", endpoint, "--shm-dir", shm_dir,
         "--l1-bytes", str(l1), "--chunk-size", str(params.chunk_size)],
        stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    results = []
    run_id = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            with open(log_path) as f:
                text = f.read()
            if "listening on" in text:
                break
            if server.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"server did not start:\n{text[-3000:]}")
            time.sleep(0.1)
        for n in clients:
            row: dict[str, Any] = {"clients": n}
            runs: dict[str, list[dict[str, Any]]] = {"server": [], "inproc": []}
            for r in range(params.rounds):
                for mode in runs:  # interleaved, so a load spike on the host hits both alike
                    say(f"{n} client(s), {mode}, round {r + 1}/{params.rounds}")
                    # every run stores new prompts (its seed differs), so nothing is present yet
                    run_id += 1
                    runs[mode].append(_run_workers(n, mode, params, f"{endpoint}#{run_id}"))
            for mode, got in runs.items():
                row[mode] = _median(got)
            s, i = row["server"], row["inproc"]
            row["ratio"] = {k: s[k] / i[k] for k in ("store_gbps", "retrieve_gbps")}
            results.append(row)
    finally:
        if server.poll() is None:
            os.kill(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(10)
        log.close()
        shutil.rmtree(sock_dir, ignore_errors=True)
        shutil.rmtree(shm_dir, ignore_errors=True)
    worst = min(min(r["ratio"].values()) for r in results)
    worst_p99 = max(r["server"]["lookup_p99_ms"] for r in results)
    return {
        "params": asdict(params),
        "prompt_bytes": params.prompt_bytes,
        "results": results,
        "targets": {
            "ratio_min": TARGET_RATIO,
            "ratio_worst": worst,
            "ratio_met": worst >= TARGET_RATIO,
            "lookup_p99_ms_max": TARGET_LOOKUP_P99_MS,
            "lookup_p99_ms_worst": worst_p99,
            "lookup_met": worst_p99 < TARGET_LOOKUP_P99_MS,
        },
        "host": {"cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")},
    }
