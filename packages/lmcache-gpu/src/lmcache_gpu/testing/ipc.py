"""IPC test bodies: KV exported by one process, mapped and copied by another, ordered by IPC events.

A vendor's ``test_<arch>_ipc.py`` subclasses :class:`IpcTests` with its names. The CPU tests (the
extension's IPC entry points and the descriptions' checks) run everywhere; the two-process tests
skip with the probe's reason where no usable GPU is.

Two real processes: this one (the "worker") owns the KV on the GPU and an event; the peer
(:mod:`lmcache_gpu.testing.ipc_peer`, the "server") maps the KV, opens the event, and gathers or
scatters with the backend's kernel. The "forward" is ``torch.cuda._sleep`` then a fill, enqueued
with no host wait, as in :mod:`lmcache_gpu.testing.ordering`; the negative control drops the
peer's wait and sees KV from before the forward.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import msgspec
import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.testing.cases import bits
from lmcache_gpu.ipc import IPC_HANDLE_BYTES, ExportedTensor, GpuIpc
from lmcache_gpu.testing._package import gpu_skip_reason
from lmcache_gpu.testing.ipc_server import IpcServerTests

SLEEP_CYCLES = 500_000_000  # ~0.25 s: a copy not ordered after the forward certainly runs first
NUM_TOKENS = 48  # 3 blocks of 16
EXAMPLE: dict[str, Any] = {
    "kind": "vllm_flash_nhd", "num_layers": 2, "num_blocks": 8, "block_size": 16, "num_kv_heads": 4,
    "head_size": 64, "dtype": "float16",
}  # fmt: skip


class _Peer:
    """The peer process, spoken to in JSON lines."""

    def __init__(self, package: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmcache_gpu.testing.ipc_peer", package],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the peer exited ({self.proc.poll()}) on {msg['op']}"
        return json.loads(line)  # type: ignore[no-any-return]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


def _wire(e: ExportedTensor) -> dict[str, Any]:
    return {"handle": e.handle.hex(), "offset": e.offset, "device": e.device, "dtype": e.dtype,
            "shape": list(e.shape), "strides": list(e.strides)}  # fmt: skip


class IpcTests(IpcServerTests):
    """Export in one process, import + copy in another, ordered by IPC events; and the cache
    server's GPU path through a real server process (:class:`IpcServerTests`). Subclasses set
    ``package``, ``backend`` and ``runtime``."""

    package: ClassVar[str] = ""
    backend: ClassVar[str] = ""

    def ipc(self) -> GpuIpc:
        return self.kernels().ipc()

    # ---- CPU: entry points and checks ----

    def test_extension_exports_the_ipc_entry_points(self) -> None:
        ext = self.ext()
        assert ext.IPC_HANDLE_BYTES == IPC_HANDLE_BYTES == 64
        for name in ("ipc_mem_export", "ipc_mem_open", "ipc_mem_close", "open_ipc_mappings", "ipc_event_create",
                     "ipc_event_export", "ipc_event_open", "event_record_on"):  # fmt: skip
            assert callable(getattr(ext, name)), name
        assert ext.open_ipc_mappings() == 0

    @pytest.mark.parametrize("size", [0, 63, 65])
    def test_a_handle_of_the_wrong_size_is_refused_before_any_runtime_call(self, size: int) -> None:
        ext = self.ext()
        for fn in (ext.ipc_mem_open, ext.ipc_event_open):
            with pytest.raises(ValueError, match=f"handle: expected 64 bytes, given {size}"):
                fn(b"\0" * size, 0)
        with pytest.raises(ValueError, match="handle: expected 64 bytes"):
            self.ipc().open_event(b"\0" * size, 0)

    def test_handles_are_bytes_not_text(self) -> None:
        with pytest.raises(TypeError):
            self.ext().ipc_mem_open("\0" * 64, 0)

    def test_description_travels_as_msgpack(self) -> None:
        e = ExportedTensor(
            bytes(range(64)), 4096, 0, "bfloat16", (2, 8, 16, 4, 64), (32768, 4096, 256, 64, 1)
        )
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(e), type=ExportedTensor) == e
        assert e.reach_nbytes() == 2 * 8 * 16 * 4 * 64 * 2

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"handle": b"x" * 10}, "handle: expected 64 bytes, given 10"),
            ({"offset": -8}, "offset: expected a non-negative int"),
            ({"dtype": "float99"}, "dtype: expected a torch dtype name"),
            ({"dtype": "Tensor"}, "dtype: expected a torch dtype name"),
            ({"shape": (2, -1)}, "shape: expected a tuple of non-negative ints"),
            ({"strides": (1,)}, "strides: expected 2 strides"),
        ],
    )
    def test_malformed_descriptions_are_refused_before_mapping(
        self, change: dict[str, Any], message: str
    ) -> None:
        good = {"handle": b"\0" * 64, "offset": 0, "device": 0, "dtype": "float16", "shape": (2, 3),
                "strides": (3, 1)}  # fmt: skip
        before = self.ext().open_ipc_mappings()
        with pytest.raises(ValueError, match=message):
            self.ipc().open_tensor(ExportedTensor(**{**good, **change}))
        assert self.ext().open_ipc_mappings() == before

    def test_export_refuses_host_tensors(self) -> None:
        with pytest.raises(ValueError, match="tensor: expected a tensor on a"):
            self.ipc().export_tensor(torch.zeros(4))

    # ---- GPU: two processes ----

    @pytest.fixture
    def gpu(self) -> None:
        reason = gpu_skip_reason(self.package, self.backend)
        if reason:
            pytest.skip(reason)

    @pytest.fixture
    def worker(self, gpu: None) -> Iterator[tuple[list[torch.Tensor], Any, _Peer, dict[str, Any]]]:
        """KV on cuda:0 filled with 1.0, this process's IPC event, the peer with both opened."""
        example = {**EXAMPLE, "dtype": getattr(torch, EXAMPLE["dtype"])}
        kv_cpu, _ = allocate_example(**example)
        kv = [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="cuda:0").fill_(1.0)
            for t in kv_cpu
        ]
        torch.cuda.synchronize()
        ipc = self.ipc()
        event = ipc.create_event(0)
        peer = _Peer(self.package)
        try:
            opened = peer.ask(
                op="open",
                tensors=[_wire(ipc.export_tensor(t)) for t in kv],
                event=ipc.export_event(event).hex(),
                example=EXAMPLE,
            )
            assert 1 <= opened["mappings"] <= len(kv)  # tensors of one allocation share one mapping
            yield kv, event, peer, opened
        finally:
            peer.close()

    @staticmethod
    def _forward(kv: list[torch.Tensor], value: float) -> None:
        torch.cuda._sleep(SLEEP_CYCLES)
        for t in kv:
            t.fill_(value)

    def test_peer_gather_waits_for_the_forward_through_the_ipc_event(self, worker: Any) -> None:
        kv, event, peer, _ = worker
        gen = torch.Generator().manual_seed(3)
        written = [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(torch.randn(t.shape, generator=gen))
            for t in kv
        ]
        sources = [w.to("cuda:0") for w in written]
        torch.cuda.synchronize()  # set-up only: the forward's output is on the GPU
        torch.cuda._sleep(SLEEP_CYCLES)
        for t, src in zip(kv, sources, strict=True):
            t.copy_(src)  # device to device: enqueued after the sleep, the host does not wait
        self.ipc().record(event)  # after the forward, on its stream; no host wait
        assert not torch.cuda.current_stream().query(), (
            "set-up: the forward finished early; raise SLEEP_CYCLES"
        )
        got = bytes.fromhex(peer.ask(op="gather", wait=True, num_tokens=NUM_TOKENS)["chunk"])
        hints = allocate_example(**{**EXAMPLE, "dtype": torch.float16})[1]
        layout = detect_layout(written, hints)
        expected = torch.empty(layout.chunk_format.nbytes(NUM_TOKENS) // 2, dtype=torch.float16)
        reference_backend().gather(layout, written, torch.arange(NUM_TOKENS, dtype=torch.int64), expected)
        assert got == bits(expected).numpy().tobytes(), "the peer's gather differs from the reference"

    def test_without_the_wait_the_peer_reads_kv_from_before_the_forward(self, worker: Any) -> None:
        """Negative control: proves the check above can see the race."""
        kv, event, peer, _ = worker
        self._forward(kv, 7.0)
        self.ipc().record(event)
        values = peer.ask(op="gather", wait=False, num_tokens=NUM_TOKENS)["values"]
        torch.cuda.synchronize()
        assert values != [7.0], "the peer read the forward's KV without waiting: the race is not visible"

    def test_peer_scatter_lands_before_this_process_reads_after_its_event(self, worker: Any) -> None:
        kv, _, peer, opened = worker
        theirs = self.ipc().open_event(bytes.fromhex(opened["event"]), 0)
        assert peer.ask(op="scatter", value=9.0, num_tokens=NUM_TOKENS, sleep_cycles=SLEEP_CYCLES)["recorded"]
        self.ipc().wait(theirs)  # this process's stream waits on the device for the peer's copy
        after = [t[:, :3].clone() for t in kv]  # the next forward's read of blocks 0..2, enqueued at once
        untouched = [t[:, 3:].clone() for t in kv]
        torch.cuda.synchronize()
        assert {float(v) for a in after for v in a.float().unique().cpu()} == {9.0}
        assert {float(v) for u in untouched for v in u.float().unique().cpu()} == {1.0}

    def test_closing_unmaps_and_leaves_the_exporters_memory(self, worker: Any) -> None:
        kv, _, peer, _ = worker
        assert peer.ask(op="close")["mappings"] == 0
        assert {float(v) for t in kv for v in t.float().unique().cpu()} == {1.0}
