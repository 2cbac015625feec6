"""Two real vLLM CPU engines, each in its own process, share one ``lmcache-core serve`` process.

Engine A (scheduler and worker in one process) computes three prompts from an empty server: the
reference outputs; its workers store every chunk in the server's shared-memory L1. Engine B (a
fresh process; scheduler and workers in separate processes, so its lookups cross the lookup
socket) serves the same prompts: every prompt loads from the server (all but its last token
cached) and gives the same greedy tokens and logprobs; a prompt A never saw is computed.

Tensor parallel 2: two TP=2 engines on the same server; B's two ranks load what A's stored.

Server killed: an engine with its own server (fs L2) stores, the server gets SIGKILL, the engine
computes the same prompts with the same tokens; a new server on the same socket and L2 directory
serves them again from L2 (the engine reconnects and registers by itself).
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


class Server:
    """A ``lmcache-core serve`` process on ``ipc://<sock_dir>/server.sock`` (optional fs L2 at
    ``l2``); :meth:`start` waits for its "listening on" line; stopped by its pid."""

    def __init__(self, sock_dir: Path, shm_dir: str, l2: Path | None = None) -> None:
        self.sock_dir, self.shm_dir, self.l2 = sock_dir, shm_dir, l2
        self.endpoint = f"ipc://{sock_dir}/server.sock"
        self.proc: subprocess.Popen[str] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log_path = self.sock_dir / f"server{self.starts}.log"
        cmd = [sys.executable, "-m", "lmcache_core.cli.main", "serve", "--listen", self.endpoint,
               "--shm-dir", self.shm_dir, "--l1-bytes", "256M", "--chunk-size", str(CHUNK)]  # fmt: skip
        if self.l2 is not None:
            cmd += ["--l2-urls", f"fs://{self.l2}"]
        with open(log_path, "w") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while "listening on" not in log_path.read_text():
            assert self.proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.poll() is None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _shm_dir() -> str:
    return tempfile.mkdtemp(prefix="lmcache-e2e-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """``(endpoint, shm_dir)`` of a cache server started for this module; stopped by its pid."""
    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'lmcache-core[server]'")
    srv = Server(tmp_path_factory.mktemp("server"), _shm_dir())
    try:
        srv.start()
        yield srv.endpoint, srv.shm_dir
    finally:
        srv.stop()
        os.rmdir(srv.shm_dir)  # the server unlinks its segments at exit: the directory must be empty


def _spec(
    model: Path, server: tuple[str, str], in_process: bool, steps: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    endpoint, shm_dir = server
    connector = {"server": endpoint, "server_shm_dir": shm_dir, "chunk_size": CHUNK, "load_policy": "always"}
    connector.update(extra.pop("connector", {}))
    return {"model": str(model), "connector": connector, "in_process": in_process, "steps": steps, **extra}


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


TP_PROMPTS = prompts(17, [290, 200])
TP2 = {"llm": {"tensor_parallel_size": 2}, "env": {"VLLM_CPU_OMP_THREADS_BIND": "0|1"}}


def test_tensor_parallel_2_engines_share_the_server(
    tiny_model: Path, tmp_path: Path, server: tuple[str, str]
) -> None:
    """Two TP=2 engines (each rank registers with the server; the rank is part of every key, so a
    TP=1 engine could not read these chunks): B loads what A's two ranks stored, same output."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("tensor parallel 2 on vLLM CPU needs 2 cores (one OpenMP thread per rank)")
    a = run_engine(_spec(tiny_model, server, False, [_gen("first", TP_PROMPTS)], **TP2), tmp_path, "tp2_a")
    for r in a["results"]["first"]:
        assert r["num_cached_tokens"] == 0
    steps = [_gen("again", TP_PROMPTS), {"op": "metrics", "name": "m"}]
    b = run_engine(_spec(tiny_model, server, False, steps, **TP2), tmp_path, "tp2_b")
    for i, (got, want) in enumerate(zip(b["results"]["again"], a["results"]["first"], strict=True)):
        assert got["num_cached_tokens"] == len(TP_PROMPTS[i]) - 1, f"prompt {i}: {got['num_cached_tokens']}"
        assert_same_output(got, want, f"TP=2 prompt {i} loaded from the server")
    # each rank loads its own half of the KV heads (whole chunks): the loaded tokens count twice
    assert b["metrics"]["m"]["vllm:lmcache_core_loaded_tokens"] == 2 * sum(len(t) for t in TP_PROMPTS)


KILL_PROMPTS = prompts(18, [270, 210])


def _l2_objects(l2: Path) -> int:
    return sum(1 for _ in l2.rglob("*.kv"))


def _wait_l2_settled(l2: Path, at_least: int, timeout_s: float = 30.0) -> int:
    """Wait until the server's write-behind wrote ``at_least`` objects and wrote none for 1 s."""
    deadline = time.monotonic() + timeout_s
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        n = _l2_objects(l2)
        if n != last:
            last, since = n, time.monotonic()
        elif n >= at_least and time.monotonic() - since >= 1.0:
            return n
        time.sleep(0.1)
    raise AssertionError(f"L2 {l2}: {last} objects after {timeout_s} s, expected at least {at_least}")


def _wait_file(path: Path, proc_alive: Any, timeout_s: float = 240.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc_alive(), f"the engine ended before {path.name}"
        assert time.monotonic() < deadline, f"{path} not created within {timeout_s} s"
        time.sleep(0.1)


def test_server_killed_mid_run_engine_recomputes_then_hits_l2(tiny_model: Path, tmp_path: Path) -> None:
    """One engine, its own server with an fs L2: stores, then the server is killed with SIGKILL;
    the same prompts are computed (same tokens, nothing cached) while it is dead; a new server on
    the same socket and L2 directory (removing the dead one's segments) serves them from L2."""
    import threading

    from lmcache_core.integrations.vllm.server_engine import BACKOFF_MAX_S

    pytest.importorskip("zmq", reason="needs pyzmq: pip install 'lmcache-core[server]'")
    sock_dir, l2, gates = tmp_path / "sock", tmp_path / "l2", tmp_path / "gates"
    for d in (sock_dir, l2, gates):
        d.mkdir()
    srv = Server(sock_dir, _shm_dir(), l2)
    srv.start()
    gate = {"op": "barrier", "dir": str(gates), "timeout_s": 240}
    steps = [_gen("stored", KILL_PROMPTS), {**gate, "name": "killed"}, _gen("down", KILL_PROMPTS),
             {**gate, "name": "restarted"}, _gen("back", KILL_PROMPTS), {"op": "metrics", "name": "m"}]  # fmt: skip
    spec = _spec(tiny_model, (srv.endpoint, srv.shm_dir), True, steps, connector={"server_timeout_s": 1.0})
    report: dict[str, Any] = {}
    errors: list[BaseException] = []

    def engine() -> None:
        try:
            report.update(run_engine(spec, tmp_path, "engine_killed_server"))
        except BaseException as e:  # handed to the test thread
            errors.append(e)

    thread = threading.Thread(target=engine)
    thread.start()
    try:
        _wait_file(gates / "killed.reached", thread.is_alive)
        chunks = sum(-(-len(t) // CHUNK) for t in KILL_PROMPTS)  # partial last chunks included
        _wait_l2_settled(l2, chunks)
        srv.kill9()
        (gates / "killed.go").touch()
        _wait_file(gates / "restarted.reached", thread.is_alive)
        srv.start()  # same socket path, same L2 directory; removes the dead server's segments
        time.sleep(BACKOFF_MAX_S)  # the engine's back-off from the dead server's time has passed
        (gates / "restarted.go").touch()
        thread.join(300)
        assert not thread.is_alive(), "the engine did not finish within 300 s of the restart"
    finally:
        (gates / "killed.go").touch()
        (gates / "restarted.go").touch()
        thread.join(60)
        srv.stop()
    if errors:
        raise errors[0]
    os.rmdir(srv.shm_dir)  # the dead server's segments were removed, the new server's at its exit
    results = report["results"]
    for i, t in enumerate(KILL_PROMPTS):
        want = results["stored"][i]
        assert want["num_cached_tokens"] == 0
        down, back = results["down"][i], results["back"][i]
        assert down["num_cached_tokens"] == 0, (
            f"prompt {i}: cached {down['num_cached_tokens']} with no server"
        )
        assert_same_output(down, want, f"prompt {i} recomputed while the server is dead")
        assert back["num_cached_tokens"] == len(t) - 1, (
            f"prompt {i}: {back['num_cached_tokens']} after restart"
        )
        assert_same_output(back, want, f"prompt {i} loaded from L2 after the restart")
    m = report["metrics"]["m"]  # the new server's L1 is empty: every hit came from L2
    assert m["vllm:lmcache_core_l2_matched_tokens"] == sum(len(t) - 1 for t in KILL_PROMPTS)
    assert m["vllm:lmcache_core_l1_matched_tokens"] == 0
    assert m["vllm:lmcache_core_load_failed_tokens"] == 0
