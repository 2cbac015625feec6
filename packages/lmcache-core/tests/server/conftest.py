"""Real cache-server processes for the server tests.

:func:`start_server` runs ``python -m lmcache_core.cli.main serve`` with the given flags, waits for
its ``listening on`` line and returns a :class:`ServerProc`; each test gets its own socket
directory and its own shared-memory directory under /dev/shm (so stale-segment clean-up sees only
the test's segments). Servers are stopped by their pid (SIGTERM, then SIGKILL after 10 s).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("zmq", reason="needs pyzmq: pip install 'lmcache-core[server]'")
pytest.importorskip("msgspec", reason="needs msgspec: pip install 'lmcache-core[server]'")

HERE = Path(__file__).parent


@dataclass
class ServerProc:
    proc: subprocess.Popen[str]
    endpoint: str
    http: str
    shm_dir: str
    lines: list[str] = field(default_factory=list)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` to the server by pid and wait (SIGKILL after ``timeout``); its exit status."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode

    def segments(self) -> list[str]:
        return sorted(n for n in os.listdir(self.shm_dir) if n.startswith("lmcache-srv."))


def start_server(
    sock_dir: str, shm_dir: str, *flags: str, listen: str = "", env: dict[str, str] | None = None
) -> ServerProc:
    """Start ``lmcache-core serve`` and wait until it listens (30 s at most)."""
    listen = listen or f"ipc://{sock_dir}/server.sock"
    cmd = [sys.executable, "-m", "lmcache_core.cli.main", "-v", "serve", "--listen", listen, "--shm-dir", shm_dir,
           "--http", "127.0.0.1:0", *flags]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 30
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("lmcache-core serve: listening on "):
            rest = line.split("listening on ", 1)[1].strip()
            endpoint, _, http = rest.partition(", http ")
            server = ServerProc(proc, endpoint, http, shm_dir, lines)
            # keep reading its output, so a chatty server never blocks on a full pipe
            threading.Thread(target=_drain, args=(proc, lines), daemon=True).start()
            return server
    proc.kill()
    proc.wait(5)
    raise RuntimeError("server did not start:\n" + "".join(lines))


def _drain(proc: subprocess.Popen[str], lines: list[str]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)


@pytest.fixture
def dirs() -> Iterator[tuple[str, str]]:
    """``(socket dir, shm dir)``: a private temp directory and one under /dev/shm."""
    sock = tempfile.mkdtemp(prefix="lmcache-sock-")
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    shm = tempfile.mkdtemp(prefix="lmcache-test-shm-", dir=base)
    yield sock, shm
    shutil.rmtree(sock, ignore_errors=True)
    shutil.rmtree(shm, ignore_errors=True)


@pytest.fixture
def launch(dirs: tuple[str, str]) -> Iterator[Callable[..., ServerProc]]:
    """``launch(*flags)``: start a server on the test's directories; every one is stopped
    (SIGKILL) at the end if the test did not stop it."""
    started: list[ServerProc] = []

    def start(*flags: str, **kw: Any) -> ServerProc:
        s = start_server(*dirs, *flags, **kw)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop(signal.SIGKILL)
        print("".join(s.lines[-40:]))  # shown when the test failed


@pytest.fixture
def server(dirs: tuple[str, str]) -> Iterator[ServerProc]:
    """A server with 64 MiB of L1, 16-token chunks, 1 s leases."""
    s = start_server(*dirs, "--l1-bytes", "64M", "--chunk-size", "16", "--lease-seconds", "1",
                     "--heartbeat-seconds", "0.25")  # fmt: skip
    yield s
    s.stop()
    print("".join(s.lines[-40:]))  # shown when the test failed
