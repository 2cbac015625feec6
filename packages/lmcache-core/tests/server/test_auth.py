"""Authentication off 127.0.0.1: a key is required to start, and a client without it (or with
another key) is refused; the right key is served. The server listens on 127.0.0.2, an address of
the loopback range that is not 127.0.0.1 (Linux routes all of 127.0.0.0/8 to lo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from lmcache_core.server.auth import client_keys, read_key_file, requires_key, server_keys
from lmcache_core.server.client import CacheClient, ServerUnavailable


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def key_file(directory: str, name: str, content: bytes) -> str:
    path = os.path.join(directory, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return path


def test_which_addresses_need_a_key() -> None:
    assert not requires_key("ipc:///run/lmcache/server.sock")
    assert not requires_key("tcp://127.0.0.1:5555") and not requires_key("tcp://[::1]:5555")
    assert requires_key("tcp://127.0.0.2:5555") and requires_key("tcp://0.0.0.0:5555")
    assert requires_key("tcp://10.1.2.3:5555")


def test_key_file_checks(tmp_path) -> None:
    good = key_file(str(tmp_path), "k", b"0123456789abcdef0123\n")
    assert read_key_file(good) == b"0123456789abcdef0123"
    os.chmod(good, 0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        read_key_file(good)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        read_key_file(key_file(str(tmp_path), "short", b"abc"))
    with pytest.raises(ValueError, match="cannot read"):
        read_key_file(str(tmp_path / "missing"))
    sp, _, cp = server_keys(b"k" * 20)
    cp2, _, sp2 = client_keys(b"k" * 20)
    assert (sp, cp) == (sp2, cp2) and sp != cp
    assert server_keys(b"j" * 20)[0] != sp


def test_no_key_no_start_off_loopback(dirs) -> None:
    _, shm = dirs
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "serve", "--listen", f"tcp://127.0.0.2:{free_port('127.0.0.2')}",
                          "--shm-dir", shm], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "auth_key_file: required" in out.stderr


def test_clients_without_the_key_are_refused(launch, dirs, tmp_path) -> None:
    key = key_file(str(tmp_path), "server.key", b"correct horse battery staple 15")
    s = launch(
        "--l1-bytes", "16M", "--auth-key-file", key, listen=f"tcp://127.0.0.2:{free_port('127.0.0.2')}"
    )
    assert s.endpoint.startswith("tcp://127.0.0.2:")
    for label, k in (("no key", None), ("another key", b"wrong horse battery staple 15!")):
        c = CacheClient(s.endpoint, auth_key=k, timeout=1.0, heartbeat=False)
        with pytest.raises(ServerUnavailable, match="no reply"):
            c.stats()
        c.close()
        assert s.proc.poll() is None, label
    with CacheClient(s.endpoint, auth_key=read_key_file(key), timeout=10.0, heartbeat=False) as c:
        doc = c.stats()
    assert doc["server"]["listen"] == s.endpoint.rsplit(":", 1)[0] + ":" + s.endpoint.rsplit(":", 1)[1]
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "status", "--server", s.endpoint, "--auth-key-file", key,
                          "--json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0 and '"protocol": 1' in out.stdout
