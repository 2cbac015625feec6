"""The vLLM worker's server mode against a real ``lmcache-core`` server process (no vLLM here).

Two engines (two clients, like two vLLM processes) share one server: B loads what A stored, byte
for byte, through the server's shared memory. The server killed with SIGKILL: every call answers
"nothing" (the engine recomputes), and once a new server runs on the same L2, B hits again.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

pytest.importorskip("zmq")

from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm.server_engine import ServerEngine
from lmcache_core.layout_registry import allocate_example
from lmcache_core.server.client import CacheClient

CHUNK = 16
TOKENS = list(range(100, 164))  # 4 chunks
SERVE = """
import sys
from lmcache_core.server.config import ServerConfig
from lmcache_core.server.server import CacheServer
listen, shm, l2 = sys.argv[1:4]
s = CacheServer(ServerConfig(listen=listen, l1_bytes=1 << 24, segment_bytes=1 << 24, shm_dir=shm,
                             chunk_size=16, l2_urls=(f"fs://{l2}",), heartbeat_seconds=0.5, lease_seconds=2))
print("ready", flush=True)
s.serve_forever()
"""


class Server:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.shm = tmp / "shm"
        self.l2 = tmp / "l2"
        self.shm.mkdir(exist_ok=True)
        self.l2.mkdir(exist_ok=True)
        self.endpoint = f"ipc://{tmp}/server.sock"
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, self.endpoint, str(self.shm), str(self.l2)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path)
    s.start()
    yield s
    s.stop()


def _engine(
    server: Server, name: str, fill: int, chunk: int = CHUNK
) -> tuple[ServerEngine, list[torch.Tensor]]:
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=8,
        block_size=16,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float32,
    )
    gen = torch.Generator().manual_seed(fill)
    for t in kv:
        t.copy_(torch.randn(t.shape, generator=gen))
    config = CacheEngineConfig(chunk_size=chunk, l1_bytes=1 << 20, model_id="tiny")
    client = CacheClient(
        server.endpoint, timeout=2.0, backoff_min=0.2, backoff_max=0.5, shm_dir=str(server.shm)
    )
    eng = ServerEngine(config, client, engine_name=name)
    eng.register_kv_caches(kv, hints)
    return eng, kv


def _rows(kv: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    """The first ``n`` tokens' K and V rows of every layer (slots 0..n-1)."""
    return [t.reshape(2, -1, *t.shape[3:])[:, :n].clone() for t in kv]


def test_engine_b_loads_what_engine_a_stored_byte_for_byte(server: Server) -> None:
    a, kv_a = _engine(server, "engine-a", 1)
    b, kv_b = _engine(server, "engine-b", 2)
    slots = torch.arange(len(TOKENS), dtype=torch.int64)
    assert b.lookup(TOKENS).tokens == 0
    stored = a.store(TOKENS, kv_a, slots)
    assert stored.tokens == len(TOKENS) and stored.chunks == 4
    assert a.store(TOKENS, kv_a, slots).tokens == 0  # present: nothing leased again
    assert b.lookup(TOKENS).tokens == len(TOKENS)
    assert not any(torch.equal(ra, rb) for ra, rb in zip(_rows(kv_a, 64), _rows(kv_b, 64), strict=True))
    loaded = b.retrieve(TOKENS, kv_b, slots, skip_leading_tokens=16)
    assert loaded.tokens == len(TOKENS) - 16 and loaded.chunks == 3  # as CacheEngine: chunk 0 skipped whole
    for ra, rb in zip(_rows(kv_a, 64), _rows(kv_b, 64), strict=True):
        assert torch.equal(ra[:, 16:], rb[:, 16:])
        assert not torch.equal(ra[:, :16], rb[:, :16])  # skipped tokens untouched
    a.close()
    b.close()


def test_server_killed_means_misses_then_hits_from_l2_after_restart(server: Server) -> None:
    a, kv_a = _engine(server, "engine-a", 1)
    b, kv_b = _engine(server, "engine-b", 2)
    slots = torch.arange(len(TOKENS), dtype=torch.int64)
    assert a.store(TOKENS, kv_a, slots).tokens == len(TOKENS)
    time.sleep(1.0)  # write-behind to the fs L2
    server.kill()
    t0 = time.monotonic()
    assert b.lookup(TOKENS).tokens == 0
    assert b.retrieve(TOKENS, kv_b, slots).tokens == 0
    assert a.store([t + 1000 for t in TOKENS], kv_a, slots).tokens == 0
    assert time.monotonic() - t0 < 10
    assert b.unavailable >= 1
    server.start()
    deadline = time.monotonic() + 15
    found = b.lookup(TOKENS)
    while found.tokens < len(TOKENS) and time.monotonic() < deadline:
        time.sleep(0.3)  # back-off, then reconnect and register again
        found = b.lookup(TOKENS)
    assert found.tokens == len(TOKENS) and found.l2_tokens > 0
    loaded = b.retrieve(TOKENS, kv_b, slots)
    while loaded.tokens < len(TOKENS) and time.monotonic() < deadline:  # prefetch from L2 in flight
        time.sleep(0.3)
        loaded = b.retrieve(TOKENS, kv_b, slots)
    assert loaded.tokens == len(TOKENS)
    for ra, rb in zip(_rows(kv_a, 64), _rows(kv_b, 64), strict=True):
        assert torch.equal(ra, rb)
    a.close()
    b.close()


def test_server_down_at_engine_start_registers_once_it_is_up(tmp_path: Path) -> None:
    server = Server(tmp_path)  # not started: the engine registers its KV while nobody listens
    a, kv_a = _engine(server, "engine-a", 1)
    slots = torch.arange(len(TOKENS), dtype=torch.int64)
    assert a.lookup(TOKENS).tokens == 0 and a.store(TOKENS, kv_a, slots).tokens == 0
    assert a.unavailable >= 1
    server.start()
    try:
        b, kv_b = _engine(server, "engine-b", 2)
        deadline = time.monotonic() + 15
        stored = a.store(TOKENS, kv_a, slots)
        while stored.tokens == 0 and time.monotonic() < deadline:  # back-off, then hello + register
            time.sleep(0.3)
            stored = a.store(TOKENS, kv_a, slots)
        assert stored.tokens == len(TOKENS)
        assert b.retrieve(TOKENS, kv_b, slots).tokens == len(TOKENS)
        for ra, rb in zip(_rows(kv_a, 64), _rows(kv_b, 64), strict=True):
            assert torch.equal(ra, rb)
        a.close()
        b.close()
    finally:
        server.stop()


def test_an_engine_with_another_chunk_size_is_not_served(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    a, kv_a = _engine(server, "engine-a", 1, chunk=32)
    slots = torch.arange(len(TOKENS), dtype=torch.int64)
    assert a.store(TOKENS, kv_a, slots).tokens == 0
    assert a.lookup(TOKENS).tokens == 0 and a.unavailable >= 2
    assert "the server's chunk_size is 16, this engine's 32" in caplog.text
    b, _ = _engine(server, "engine-b", 2)
    assert b.lookup(TOKENS).tokens == 0  # nothing was stored
    a.close()
    b.close()
