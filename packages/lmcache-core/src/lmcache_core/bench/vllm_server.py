"""A real ``vllm serve`` process on 127.0.0.1 for the serving benchmark and the demo.

:class:`VllmServer` starts ``python -m vllm.entrypoints.cli.main serve MODEL`` (the OpenAI API)
in its own session, with or without lmcache-core's connector, with vLLM's prefix cache on,
float32, a fixed KV space in blocks (``--num-gpu-blocks-override``) and a pinned CPU binding
(:class:`CpuBinding`), waits for ``/health`` while reporting progress, and stops it by its pid.
:func:`scrape_metrics` reads ``/metrics`` over HTTP.

Importing this module imports neither vLLM nor torch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmcache_core.integrations.vllm.runner import connector_config


@dataclass(frozen=True)
class CpuBinding:
    """vLLM CPU's OpenMP binding, the same for every compared engine.

    vLLM reserves CPUs for its other processes when it binds automatically, one more per rank
    whenever a ``kv_transfer_config`` is set (``ompmultiprocessing``: ``reserve_cpu_num +=
    local_world_size``), so an engine with a connector and one without get different thread
    counts. An explicit ``VLLM_CPU_OMP_THREADS_BIND`` (core ids, e.g. ``0`` or ``0-3``) and
    ``VLLM_CPU_NUM_OF_RESERVED_CPU`` give both the same.
    """

    threads_bind: str
    reserved: int

    @classmethod
    def default(cls) -> CpuBinding:
        """Every core but the last for OpenMP (the last left to the API server and the engine
        core's scheduler); core 0 alone on one or two cores."""
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
        omp = cores[:-1] if len(cores) > 2 else cores[:1]
        return cls(",".join(str(c) for c in omp), max(0, len(cores) - len(omp)))

    def env(self) -> dict[str, str]:
        return {
            "VLLM_CPU_OMP_THREADS_BIND": self.threads_bind,
            "VLLM_CPU_NUM_OF_RESERVED_CPU": str(self.reserved),
        }


def binding_from_log(text: str) -> str:
    """The OpenMP binding a vLLM CPU engine logged ("OpenMP thread binding info"): the
    ``VLLM_CPU_OMP_THREADS_BIND`` it read, ``reserve_cpu_num`` and each rank's core ids."""
    found = re.findall(
        r"(VLLM_CPU_OMP_THREADS_BIND=[^\n,]*|reserve_cpu_num=\d+|local_rank=\d+, core ids=\[[^\]]*\])", text
    )
    return "; ".join(dict.fromkeys(found)) or "(vLLM logged no binding)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerConfig:
    """One ``vllm serve``: ``connector`` is the connector's extra config (None: plain vLLM)."""

    name: str
    model: str
    connector: dict[str, Any] | None
    num_blocks: int
    block_size: int = 32
    max_model_len: int = 2048
    max_num_seqs: int = 4
    binding: CpuBinding = field(default_factory=CpuBinding.default)
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    def args(self, port: int) -> list[str]:
        a = [sys.executable, "-m", "lmcache_core.bench.vllm_cli", "serve", self.model,
             "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--seed", "0",
             "--block-size", str(self.block_size), "--max-model-len", str(self.max_model_len),
             "--max-num-seqs", str(self.max_num_seqs), "--num-gpu-blocks-override", str(self.num_blocks),
             "--enable-prefix-caching", "--served-model-name", "model"]  # fmt: skip
        if self.connector is not None:
            a += ["--kv-transfer-config", json.dumps(connector_config(self.connector))]
        return a + list(self.extra_args)


class ServerFailed(RuntimeError):
    """The server exited or did not answer ``/health`` in time; the message ends with its log."""


class VllmServer:
    """``with VllmServer(config, workdir, on_wait=...) as s:`` ... ``s.url``; log ``workdir/<name>.log``.

    ``on_wait(seconds)`` is called about every 5 s while the server starts (progress lines).
    """

    def __init__(
        self,
        config: ServerConfig,
        workdir: Path,
        on_wait: Callable[[float], None] | None = None,
        timeout_s: float = 900.0,
    ) -> None:
        self.config = config
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{config.name}.log"
        self._on_wait = on_wait
        self._timeout_s = timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0

    def __enter__(self) -> VllmServer:
        env = dict(os.environ)
        env.update({"VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"})
        env.update(self.config.binding.env())
        env.update(self.config.env)
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.config.args(self.port),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, t0: float) -> None:
        assert self.proc is not None
        last = t0
        while True:
            if self.proc.poll() is not None:
                raise ServerFailed(
                    f"{self.config.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            now = time.monotonic()
            if now - t0 > self._timeout_s:
                raise ServerFailed(
                    f"{self.config.name}: no /health after {self._timeout_s:.0f} s:\n{self.log_tail()}"
                )
            if self._on_wait is not None and now - last >= 5:
                last = now
                self._on_wait(now - t0)
            time.sleep(0.5)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def binding_report(self) -> str:
        """The OpenMP binding vLLM logged for this server (``core ids``, ``reserve_cpu_num``)."""
        return binding_from_log(self.log_path.read_text(errors="replace") if self.log_path.exists() else "")

    def stop(self) -> None:
        """SIGINT to the server's session, then SIGKILL after 30 s."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
            try:
                os.killpg(p.pid, sig)
            except ProcessLookupError:
                return
            try:
                p.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


#: Counters read from ``/metrics`` (prometheus-client names, summed over label sets).
METRICS = (
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:external_prefix_cache_queries_total",
    "vllm:external_prefix_cache_hits_total",
    "vllm:lmcache_core_lookup_tokens_total",
    "vllm:lmcache_core_hit_tokens_total",
    "vllm:lmcache_core_matched_tokens_total",
    "vllm:lmcache_core_l2_matched_tokens_total",
    "vllm:lmcache_core_declined_tokens_total",
    "vllm:lmcache_core_load_failed_tokens_total",
    "vllm:lmcache_core_stored_tokens_total",
    "vllm:lmcache_core_store_seconds_total",
    "vllm:lmcache_core_stores_total",
    "vllm:lmcache_core_async_loads_total",
    "vllm:num_preemptions_total",
    "vllm:prompt_tokens_total",
)


def scrape_metrics(url: str) -> dict[str, float]:
    """:data:`METRICS` from ``url/metrics`` (0 for a counter the server does not export)."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    out = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, rest = line.partition("{") if "{" in line.split(" ")[0] else line.partition(" ")
        if name in out:
            value = rest.rsplit(" ", 1)[-1] if "{" in line.split(" ")[0] else rest
            out[name] += float(value)
    return out


def metrics_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
