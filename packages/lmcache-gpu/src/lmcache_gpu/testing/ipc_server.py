"""The cache server's GPU path end to end: a real ``lmcache-core serve`` process with this GPU
backend, and this process as the worker (:class:`~lmcache_core.server.remote.RemoteCacheEngine`).

The worker's KV is on the GPU; it registers the KV by IPC handle, and the server gathers from the
mapped KV into its page-locked L1 after the worker's IPC event (store), and scatters back and
records its own event that the worker's stream waits for (retrieve). The "forward" before the
store is ``torch.cuda._sleep`` then a copy, enqueued with no host wait: a server that did not wait
for the worker's event would store KV from before it. Mixed into :class:`~lmcache_gpu.testing.IpcTests`
(skipped with the probe's reason where no usable GPU is); one server process serves the class.
Imported only by tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout_registry import allocate_example
from lmcache_gpu.testing._package import PackageUnderTest, gpu_skip_reason

SLEEP_CYCLES = 500_000_000  # ~0.25 s
CHUNK = 16
NUM_TOKENS = 40  # 2 full chunks + 8 tokens
EXAMPLE: dict[str, Any] = {
    "kind": "vllm_flash_nhd", "num_layers": 2, "num_blocks": 8, "block_size": 16, "num_kv_heads": 4,
    "head_size": 64, "dtype": torch.float16,
}  # fmt: skip


class _Server:
    """``lmcache-core serve`` with ``gpu_backend`` set, on a private socket and shm directory."""

    def __init__(self, package: str) -> None:
        self.sock_dir = tempfile.mkdtemp(prefix="lmcache-sock-")
        base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
        self.shm_dir = tempfile.mkdtemp(prefix="lmcache-test-shm-", dir=base)
        self.endpoint = f"ipc://{self.sock_dir}/server.sock"
        cmd = [sys.executable, "-m", "lmcache_core.cli.main", "-v", "serve", "--listen", self.endpoint,
               "--shm-dir", self.shm_dir, "--l1-bytes", "64M", "--chunk-size", str(CHUNK)]  # fmt: skip
        env = {**os.environ, "LMCACHE_SERVER_GPU_BACKEND": package}
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if line.startswith("lmcache-core serve: listening on "):
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError("server did not start:\n" + "".join(self.lines))

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # by its pid
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.sock_dir, ignore_errors=True)
        shutil.rmtree(self.shm_dir, ignore_errors=True)


class IpcServerTests(PackageUnderTest):
    """Two-process tests of the server's GPU path (worker here, server in its own process)."""

    @pytest.fixture(scope="class")
    def gpu_server(self) -> Iterator[_Server]:
        """One server process for the class (its start-up is most of these tests' time)."""
        reason = gpu_skip_reason(self.package, self.backend)
        if reason:
            pytest.skip(reason)
        server = _Server(self.package)
        try:
            yield server
        finally:
            server.stop()
            print("".join(server.lines[-40:]))  # shown when a test failed

    @pytest.fixture
    def served(self, gpu_server: _Server) -> Iterator[tuple[Any, list[torch.Tensor], Any, _Server]]:
        """``(engine, kv on cuda:0 filled with 1.0, hints, server)``: the KV registered by IPC handle."""
        from lmcache_core.server.remote import RemoteCacheEngine

        kv_cpu, hints = allocate_example(**EXAMPLE)
        kv = [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda:0").fill_(1.0)
            for t in kv_cpu
        ]
        torch.cuda.synchronize()
        engine = RemoteCacheEngine(
            gpu_server.endpoint,
            CacheEngineConfig(model_id="ipc-test", backend=self.backend),
            layout_hints=hints,
        )
        try:
            engine.register_kv_caches(kv)
            yield engine, kv, hints, gpu_server
        finally:
            engine.close()

    @staticmethod
    def _stats(server: _Server) -> dict[str, Any]:
        from lmcache_core.server.client import CacheClient

        with CacheClient(server.endpoint, heartbeat=False) as admin:
            return admin.stats()

    def test_worker_on_a_gpu_registers_its_kv_by_ipc_handle(self, served: Any) -> None:
        engine, kv, _, _ = served
        assert engine.client.hello.gpu == self.backend
        assert engine.ipc_active, "a worker with GPU KV and a GPU server must take the IPC path"
        status = engine.server_status()
        assert status["server"]["gpu_backend"] == self.backend
        assert [e["ipc_tensors"] for e in status["engines"] if e["model_id"] == "ipc-test"] == [len(kv)]

    def test_store_after_the_forward_and_retrieve_back_through_the_server(self, served: Any) -> None:
        engine, kv, _, _ = served
        gen = torch.Generator().manual_seed(11)
        written = [torch.randn(t.shape, generator=gen).to(t.dtype) for t in kv]
        sources = [w.to("cuda:0") for w in written]
        tokens = list(range(1000, 1000 + NUM_TOKENS))  # not stored by another test of the class
        slots = torch.arange(NUM_TOKENS, dtype=torch.int64, device="cuda:0")
        torch.cuda.synchronize()  # set-up only
        torch.cuda._sleep(SLEEP_CYCLES)
        for t, src in zip(kv, sources, strict=True):
            t.copy_(src)  # the "forward": enqueued after the sleep, the host does not wait
        stored = engine.store(tokens, kv, slots)
        assert (stored.tokens, stored.chunks) == (NUM_TOKENS, 3), stored
        for t in kv:
            t.zero_()
        got = engine.retrieve(tokens, kv, slots, skip_leading_tokens=CHUNK)
        assert (got.tokens, got.chunks) == (NUM_TOKENS - CHUNK, 2), got
        after = [t.clone() for t in kv]  # enqueued on the stream that waits for the server's event
        torch.cuda.synchronize()
        for a, w in zip(after, written, strict=True):  # [2, blocks, block, heads, dim]: token = slot
            flat, ref = a.cpu().reshape(2, -1, *a.shape[3:]), w.reshape(2, -1, *w.shape[3:])
            assert torch.equal(flat[:, CHUNK:NUM_TOKENS], ref[:, CHUNK:NUM_TOKENS]), "retrieved KV differs"
            assert not flat[:, :CHUNK].any() and not flat[:, NUM_TOKENS:].any(), (
                "KV outside the range changed"
            )

    def test_closing_the_worker_unmaps_its_kv_on_the_server(self, served: Any) -> None:
        engine, kv, _, server = served
        before = self._stats(server)["hits"]["ipc_closed"]
        engine.close()
        assert self._stats(server)["hits"]["ipc_closed"] == before + 1
        assert {float(v) for t in kv for v in t.float().unique().cpu()} == {1.0}, "the worker's KV changed"
