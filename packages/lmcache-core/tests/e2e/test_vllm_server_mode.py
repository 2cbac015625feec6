"""Two real vLLM CPU engines, each in its own process, share one ``lmcache-core serve`` process.

Engine A (scheduler and worker in one process) computes three prompts from an empty server: the
reference outputs; its workers store every chunk in the server's shared-memory L1. Engine B (a
fresh process; scheduler and workers in separate processes, so its lookups cross the lookup
socket) serves the same prompts: every prompt loads from the server (all but its last token
cached) and gives the same greedy tokens and logprobs; a prompt A never saw is computed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHUNK, assert_same_output, prompts, run_engine

pytestmark = pytest.mark.slow

PROMPTS = prompts(15, [300, 260, 330])
NEW = prompts(16, [280])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(endpoint, shm_dir)`` of a cache server started for this module; stopped by its pid."""
    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'lmcache-core[server]'")
    sock_dir = tmp_path_factory.mktemp("server")
    shm_dir = tempfile.mkdtemp(prefix="lmcache-e2e-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    cmd = [sys.executable, "-m", "lmcache_core.cli.main", "serve", "--listen", f"ipc://{sock_dir}/server.sock",
           "--shm-dir", shm_dir, "--l1-bytes", "256M", "--chunk-size", str(CHUNK)]  # fmt: skip
    log = open(sock_dir / "server.log", "w+")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while "listening on" not in (sock_dir / "server.log").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, (sock_dir / "server.log").read_text()
            time.sleep(0.1)
        yield f"ipc://{sock_dir}/server.sock", shm_dir
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
        os.rmdir(shm_dir)  # the server unlinks its segments at exit: the directory must be empty


def _spec(
    model: Path, server: tuple[str, str], in_process: bool, steps: list[dict[str, Any]]
) -> dict[str, Any]:
    endpoint, shm_dir = server
    connector = {"server": endpoint, "server_shm_dir": shm_dir, "chunk_size": CHUNK, "load_policy": "always"}
    return {"model": str(model), "connector": connector, "in_process": in_process, "steps": steps}


def _gen(name: str, batch: list[list[int]]) -> dict[str, Any]:
    return {"op": "generate", "name": name, "prompts": batch, "max_tokens": 8, "logprobs": 5}


def test_engine_b_hits_what_engine_a_stored(
    tiny_model: Path, tmp_path: Path, server: tuple[str, str]
) -> None:
    a = run_engine(_spec(tiny_model, server, True, [_gen("first", PROMPTS)]), tmp_path, "engine_a")
    for r in a["results"]["first"]:
        assert r["num_cached_tokens"] == 0
    b = run_engine(
        _spec(tiny_model, server, False, [_gen("again", PROMPTS), _gen("new", NEW)]), tmp_path, "engine_b"
    )
    for i, (got, want) in enumerate(zip(b["results"]["again"], a["results"]["first"], strict=True)):
        assert got["num_cached_tokens"] == len(PROMPTS[i]) - 1, f"prompt {i}: {got['num_cached_tokens']}"
        assert_same_output(got, want, f"prompt {i} loaded from the server")
    assert b["results"]["new"][0]["num_cached_tokens"] == 0
