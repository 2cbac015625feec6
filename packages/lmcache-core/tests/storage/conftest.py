"""Real servers for the storage tests: redis-server (single and a 3-node cluster) and moto_server.

Every server listens on 127.0.0.1 on a free port, runs from a temporary directory with
persistence off, and is stopped by its pid (terminate, then kill after 5 s). A missing binary
skips the tests that need it, with the install command in the reason; under ``CI=true`` (where
``make test`` installs both) it fails them instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lmcache_core.testing.require import import_module, missing_dependency

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
MOTO_SERVER = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
    "moto_server"
)


def free_port(also_plus: int = 0) -> int:
    """A TCP port free on 127.0.0.1 (and ``port + also_plus`` too when given)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if also_plus and port + also_plus < 65536:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + also_plus))
                except OSError:
                    continue
        elif also_plus:
            continue
        return port
    raise RuntimeError("no free port pair found on 127.0.0.1")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not listen within {timeout} s")


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class RedisServer:
    """One redis-server process; ``stop()`` / ``start()`` again on the same port; ``pause()``
    and ``resume()`` freeze it (SIGSTOP / SIGCONT) so clients block as on a hung server."""

    def __init__(self, workdir: Path, port: int | None = None, *extra: str) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        assert REDIS_SERVER is not None
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                "no", "--dir", str(self.workdir), "--loglevel", "warning", "--daemonize", "no", *self.extra]  # fmt: skip
        log = open(self.workdir / f"redis-{self.port}.log", "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        wait_port(self.port, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a paused server cannot act on SIGTERM
        stop_process(self.proc)
        self.proc = None

    def pause(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGCONT)

    def cli(self, *args: str) -> str:
        assert REDIS_CLI is not None
        out = subprocess.run([REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), *args], capture_output=True,
                             text=True, timeout=10, check=True)  # fmt: skip
        return out.stdout


def _need_redis() -> None:
    if REDIS_SERVER is None or REDIS_CLI is None:
        missing_dependency("redis-server", "apt-get install -y redis-server")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """A redis-server shared by the session's tests (they use distinct key prefixes)."""
    _need_redis()
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path):
    """A redis-server for one test, which may stop, restart, pause or reconfigure it."""
    _need_redis()
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real 3-master Redis Cluster on 127.0.0.1 (no replicas); yields a node's URL."""
    _need_redis()
    root = tmp_path_factory.mktemp("cluster")
    nodes = []
    try:
        for i in range(3):
            port = free_port(also_plus=10000)  # the cluster bus listens on port + 10000
            nodes.append(RedisServer(root / f"n{i}", port, "--cluster-enabled", "yes", "--cluster-config-file",
                                     f"nodes-{port}.conf", "--cluster-node-timeout", "2000").start())  # fmt: skip
        assert REDIS_CLI is not None
        subprocess.run([REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes),
                        "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, timeout=30,
                       check=True)  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all("cluster_state:ok" in n.cli("cluster", "info") for n in nodes):
                break
            time.sleep(0.1)
        else:
            pytest.fail("redis cluster did not reach cluster_state:ok in 20 s")
        yield f"redis+cluster://127.0.0.1:{nodes[0].port}"
    finally:
        for n in nodes:
            n.stop()


def start_single_node_cluster(workdir: Path, port: int) -> RedisServer:
    """A real Redis Cluster of one master holding all 16384 slots, on ``port``."""
    node = RedisServer(workdir, port, "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                       "--cluster-node-timeout", "2000").start()  # fmt: skip
    node.cli("cluster", "addslotsrange", "0", "16383")
    deadline = time.monotonic() + 20
    while "cluster_state:ok" not in node.cli("cluster", "info"):
        if time.monotonic() > deadline:
            raise RuntimeError("single-node cluster did not reach cluster_state:ok in 20 s")
        time.sleep(0.05)
    return node


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A 1 MiB tmpfs mounted for one test: a real file system that fills up (needs root)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here (needs root): {res.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture(scope="session")
def aws_env():
    """Dummy credentials for moto (never real ones), restored after the session."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(var, raising=False)
        yield


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory, aws_env):
    """A moto_server (S3 API) on 127.0.0.1; yields its endpoint URL."""
    if MOTO_SERVER is None:
        missing_dependency("moto_server", "pip install 'moto[server]'")
    import_module("boto3", "pip install boto3")
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "ab")
    proc = subprocess.Popen([MOTO_SERVER, "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)  # fmt: skip
    log.close()
    try:
        wait_port(port, proc, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(proc)


@pytest.fixture
def s3_bucket(moto_server: str, request: pytest.FixtureRequest):
    """A fresh bucket on the moto server; yields ``(endpoint, bucket)``."""
    import boto3

    name = "lmc-" + "".join(c for c in request.node.name.lower() if c.isalnum())[:40]
    client = boto3.client("s3", endpoint_url=moto_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    yield moto_server, name


class Mounts:
    """Mounts made by one test (needs root), each undone at the end: read-only bind mounts of a
    directory, and small tmpfs file systems (``nr_inodes`` runs out of inodes)."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def _mount(self, *args: str) -> None:
        res = subprocess.run(["mount", *args], capture_output=True, text=True)
        if res.returncode != 0:
            pytest.skip(f"cannot mount here (needs root): mount {' '.join(args)}: {res.stderr.strip()}")

    def read_only(self, src: Path, dst: Path) -> Path:
        """``dst`` shows ``src`` read-only (EROFS for everyone, root included)."""
        src.mkdir(parents=True, exist_ok=True)
        dst.mkdir(parents=True, exist_ok=True)
        self._mount("--bind", str(src), str(dst))
        self.points.append(dst)
        self._mount("-o", "remount,bind,ro", str(dst))
        return dst

    def writable(self, dst: Path) -> None:
        """Make a read-only bind mount writable again (the share "comes back")."""
        self._mount("-o", "remount,bind,rw", str(dst))

    def tmpfs(self, dst: Path, size: str = "4m", nr_inodes: int = 0) -> Path:
        dst.mkdir(parents=True, exist_ok=True)
        opts = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
        self._mount("-t", "tmpfs", "-o", opts, "tmpfs", str(dst))
        self.points.append(dst)
        return dst

    def undo(self) -> None:
        for p in reversed(self.points):
            subprocess.run(["umount", "-l", str(p)], check=False, capture_output=True)


@pytest.fixture
def mounts():
    m = Mounts()
    yield m
    m.undo()
