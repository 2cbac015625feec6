"""The server's GPU IPC ops without a GPU: wire round trips, refusal without a GPU backend, the
store/retrieve logic and session clean-up.

``FakeGpu``/``FakeIpc`` are a plain test double of the interface the server uses
(:class:`lmcache_core.server.gpu_path.GpuServices`, :class:`lmcache_gpu.ipc.GpuIpc`): a "handle"
names a host tensor of this process, "mapping" it returns a view of that tensor, events are
recorded calls, and gather/scatter are the reference backend's. What it cannot show (device
ordering through real IPC events, real mappings) is the two-process test in
``lmcache_gpu.testing.ipc_server`` (skipped without a GPU).
"""

from __future__ import annotations

import gc
import os
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.server import protocol as p
from lmcache_core.server.client import format_descs, token_bytes
from lmcache_core.server.config import ServerConfig
from lmcache_core.server.service import CacheService

CHUNK = 16
EXAMPLE: dict[str, Any] = {
    "kind": "vllm_flash_nhd", "num_layers": 2, "num_blocks": 8, "block_size": 16, "num_kv_heads": 2,
    "head_size": 8, "dtype": torch.float32,
}  # fmt: skip
TOKENS = np.arange(40, dtype=np.uint32)  # 2 full chunks + 8 tokens


@dataclass(frozen=True)
class ExportedTensor:
    """The fake's description type (found by the server beside the ipc object, as
    :class:`lmcache_gpu.ipc.ExportedTensor` is)."""

    handle: bytes
    offset: int
    device: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]


class FakeEvent:
    def __init__(self, name: str) -> None:
        self.name = name


class FakeIpc:
    """Test double of GpuIpc: handles name host tensors kept in ``exported``."""

    def __init__(self) -> None:
        self.exported: dict[bytes, torch.Tensor] = {}
        self.calls: list[tuple[str, str]] = []
        self.views: list[weakref.ref[torch.Tensor]] = []

    def export(self, tensor: torch.Tensor) -> p.IpcTensor:
        handle = len(self.exported).to_bytes(4, "little") * 16
        self.exported[handle] = tensor
        dtype = str(tensor.dtype).removeprefix("torch.")
        return p.IpcTensor(handle, 0, 0, dtype, list(tensor.shape), list(tensor.stride()))

    def open_tensor(self, e: ExportedTensor, device: int) -> torch.Tensor:
        assert isinstance(e, ExportedTensor)
        base = self.exported[e.handle]
        view = base.as_strided(e.shape, e.strides)
        self.views.append(weakref.ref(view))
        return view

    def live_views(self) -> int:
        gc.collect()
        return sum(1 for r in self.views if r() is not None)

    def open_event(self, handle: bytes, device: int) -> FakeEvent:
        return FakeEvent("worker")

    def create_event(self, device: int) -> FakeEvent:
        return FakeEvent("server")

    def export_event(self, event: FakeEvent) -> bytes:
        return b"S" * 64

    def wait(self, event: FakeEvent, stream: int = 0) -> None:
        self.calls.append(("wait", event.name))

    def record(self, event: FakeEvent, stream: int = 0) -> None:
        self.calls.append(("record", event.name))


class FakeGpu:
    """Test double of GpuKernels' server-side calls, over the reference backend."""

    backend = "fake"

    def __init__(self) -> None:
        self._ipc = FakeIpc()
        self.streams: set[int] = set()
        self.locked: list[int] = []
        self._next = 100

    def ipc(self) -> FakeIpc:
        return self._ipc

    def gather(self, layout: Any, kv: Any, sm: Any, out: Any, skip: int = 0, *, stream: int = 0) -> str:
        assert stream in self.streams
        self._ipc.calls.append(("gather", ""))
        reference_backend().gather(layout, kv, sm, out, skip)
        return "mapped"

    def scatter(self, layout: Any, kv: Any, sm: Any, src: Any, skip: int = 0, *, stream: int = 0) -> str:
        assert stream in self.streams
        self._ipc.calls.append(("scatter", ""))
        reference_backend().scatter(layout, kv, sm, src, skip)
        return "staged"

    def new_stream(self, device: Any = None) -> int:
        self._next += 1
        self.streams.add(self._next)
        return self._next

    def destroy_stream(self, stream: int) -> None:
        self.streams.remove(stream)

    def synchronize(self, handle: Any = None) -> None:
        self._ipc.calls.append(("synchronize", ""))

    def register_host(self, tensor: torch.Tensor) -> None:
        self.locked.append(tensor.data_ptr())

    def unregister_host(self, tensor: torch.Tensor) -> None:
        self.locked.remove(tensor.data_ptr())


def _config(shm: str) -> ServerConfig:
    return ServerConfig(listen="ipc:///unused", l1_bytes=2**20, chunk_size=CHUNK, shm_dir=shm,
                        lease_seconds=1.0, heartbeat_seconds=0.25)  # fmt: skip


@pytest.fixture
def shm():
    d = tempfile.mkdtemp(prefix="lmcache-test-shm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    yield d
    assert not os.listdir(d), "close must unlink every segment"
    os.rmdir(d)


@pytest.fixture
def gpu_service(shm: str):
    gpu = FakeGpu()
    svc = CacheService(_config(shm), gpu=gpu)
    yield svc, gpu
    svc.close(0)
    assert gpu.locked == [], "close must unlock the L1 segments it page-locked"


@pytest.fixture
def kv() -> tuple[list[torch.Tensor], Any]:
    tensors, hints = allocate_example(**EXAMPLE)
    gen = torch.Generator().manual_seed(5)
    for t in tensors:
        t.copy_(torch.randn(t.shape, generator=gen))
    return tensors, detect_layout(tensors, hints)


def connect(svc: CacheService, peer: bytes, layout: Any) -> p.HelloReply:
    hello = svc.handle(peer, p.Hello(rid=1, version=p.PROTOCOL_VERSION, client="t"))
    assert isinstance(hello, p.HelloReply)
    r = svc.handle(
        peer, p.Register(rid=2, engine="e", model_id="m", formats=format_descs([layout.chunk_format]))
    )
    assert isinstance(r, p.RegisterReply), r
    return hello


def register_ipc(
    svc: CacheService, gpu: FakeGpu, peer: bytes, tensors: list[torch.Tensor], layout: Any
) -> Any:
    group = p.IpcGroup([gpu.ipc().export(t) for t in tensors], p.IpcHints(kind=layout.kind))
    return svc.handle(peer, p.RegisterIpc(rid=3, groups=[group], event=b"W" * 64))


def slot_bytes(n: int) -> list[bytes]:
    return [np.arange(n, dtype="<i8").tobytes()]


# ---- wire --------------------------------------------------------------------------------------


def test_ipc_requests_and_replies_round_trip_through_msgpack() -> None:
    t = p.IpcTensor(b"\x01" * 64, 4096, 0, "float16", [2, 8, 16, 4, 64], [65536, 8192, 256, 64, 1])
    reqs = [
        p.RegisterIpc(
            rid=5, groups=[p.IpcGroup([t, t], p.IpcHints(kind="vllm_flash_nhd"), 2)], event=b"\x02" * 64
        ),
        p.StoreIpc(rid=6, tokens=token_bytes([1, 2, 3]), salt="s", stop=2, slot_mapping=slot_bytes(3)),
        p.RetrieveIpc(rid=7, tokens=token_bytes([1, 2, 3]), skip=1, slot_mapping=slot_bytes(3)),
        p.ReleaseIpc(rid=8),
    ]
    for req in reqs:
        assert p.decode_request(p.encode(req)) == req
    reply = p.RegisterIpcReply(rid=5, event=b"\x03" * 64, tensors=2)
    assert p.decode_reply(p.encode(reply)) == reply


def test_a_handle_of_the_wrong_size_is_malformed() -> None:
    bad = {
        "op": "register_ipc",
        "rid": 4,
        "groups": [[[[b"x" * 63, 0, 0, "float16", [1], [1]]]]],
        "event": b"",
    }
    with pytest.raises(p.ProtocolError) as e:
        p.decode_request(msgspec.msgpack.encode(bad))
    assert e.value.code == "malformed" and e.value.rid == 4


def test_minor_version_keeps_old_peers_working() -> None:
    # a client from before the minor version decodes a new server's hello (the extra fields are ignored)
    class OldHello(msgspec.Struct, tag_field="op", tag="hello"):
        rid: int = 0
        version: int = 0
        server: str = ""

    new = p.encode(p.HelloReply(rid=1, minor=p.PROTOCOL_MINOR, gpu="cuda"))
    old = msgspec.msgpack.decode(new, type=OldHello)
    assert (old.rid, old.version) == (1, p.PROTOCOL_VERSION)
    # a new client reading an old server's hello (no minor) sees minor 0: it sends no IPC op
    legacy = msgspec.msgpack.encode({"op": "hello", "rid": 1, "version": 1, "server": "old"})
    reply = p.decode_reply(legacy)
    assert isinstance(reply, p.HelloReply) and reply.minor == 0 and reply.gpu == ""
    assert set(p.MINOR_OF) == {"register_ipc", "store_ipc", "retrieve_ipc", "release_ipc"}


# ---- service -------------------------------------------------------------------------------------


def test_ipc_registration_is_refused_without_a_gpu_backend(shm: str, kv: Any) -> None:
    tensors, layout = kv
    svc = CacheService(_config(shm))
    try:
        hello = connect(svc, b"a", layout)
        assert hello.minor == p.PROTOCOL_MINOR and hello.gpu == ""
        r = register_ipc(svc, FakeGpu(), b"a", tensors, layout)
        assert isinstance(r, p.Error) and r.code == "no_gpu" and r.rid == 3
        assert "gpu_backend" in r.message and "shared-memory" in r.message
        r = svc.handle(b"a", p.StoreIpc(rid=4, tokens=token_bytes(TOKENS), slot_mapping=slot_bytes(40)))
        assert isinstance(r, p.Error) and r.code == "no_gpu"
        assert svc.status()["hits"]["errors"] == {"no_gpu": 2}
    finally:
        svc.close(0)


def test_a_bad_gpu_backend_setting_names_the_setting(shm: str) -> None:
    with pytest.raises(ValueError, match="gpu_backend"):
        ServerConfig(listen="ipc:///unused", gpu_backend="not a package")
    with pytest.raises(ValueError, match="gpu_backend: expected a GPU backend package"):
        CacheService(
            ServerConfig(listen="ipc:///unused", l1_bytes=2**20, shm_dir=shm, gpu_backend="no_such_pkg")
        )
    assert os.listdir(shm) == [], "a refused setting must leave no segment behind"


def test_store_ipc_gathers_after_the_workers_event_and_retrieve_ipc_scatters_back(
    gpu_service: Any, kv: Any
) -> None:
    svc, gpu = gpu_service
    tensors, layout = kv
    assert gpu.locked, "the L1 segments are page-locked with the GPU backend"
    hello = connect(svc, b"a", layout)
    assert hello.gpu == "fake"
    r = register_ipc(svc, gpu, b"a", tensors, layout)
    assert isinstance(r, p.RegisterIpcReply) and r.event == b"S" * 64 and r.tensors == len(tensors)
    done = svc.handle(b"a", p.StoreIpc(rid=4, tokens=token_bytes(TOKENS), slot_mapping=slot_bytes(40)))
    assert isinstance(done, p.CommitReply), done
    nb = layout.chunk_format.nbytes(1)
    assert (done.chunks, done.tokens, done.nbytes) == (3, 40, 40 * nb)
    calls = gpu.ipc().calls
    assert (
        calls[0] == ("wait", "worker")
        and calls[1:4] == [("gather", "")] * 3
        and calls[4] == ("synchronize", "")
    )
    # the bytes in L1 are the reference gather of the same slots
    lease = svc.handle(b"a", p.PrepareRetrieve(tokens=token_bytes(TOKENS)))
    assert isinstance(lease, p.PrepareReply) and len(lease.slots) == 3
    for slot in lease.slots:
        seg = next(s for s in svc.arena._segments if s.name == slot.segment)
        got = seg.tensor[slot.offset : slot.offset + slot.nbytes].view(torch.float32)
        want = torch.empty(slot.nbytes // 4, dtype=torch.float32)
        sm = torch.arange(slot.start, slot.end, dtype=torch.int64)
        reference_backend().gather(
            layout, tensors, sm, want.view(layout.chunk_format.shape(slot.end - slot.start))
        )
        assert torch.equal(got, want)
    svc.handle(b"a", p.Release(lease=lease.lease))
    # retrieve into zeroed KV: tokens from 20 on come back, the rest stays zero
    original = [t.clone() for t in tensors]
    for t in tensors:
        t.zero_()
    calls.clear()
    got = svc.handle(
        b"a", p.RetrieveIpc(rid=5, tokens=token_bytes(TOKENS), skip=20, slot_mapping=slot_bytes(40))
    )
    assert isinstance(got, p.CommitReply) and (got.chunks, got.tokens) == (2, 20), got
    assert calls == [("scatter", ""), ("scatter", ""), ("record", "server"), ("synchronize", "")]
    for t, o in zip(tensors, original, strict=True):  # vllm_flash_nhd: [2, blocks, block, heads, dim]
        flat, ref = t.reshape(2, -1, *t.shape[3:]), o.reshape(2, -1, *o.shape[3:])
        assert (
            torch.equal(flat[:, 20:40], ref[:, 20:40]) and not flat[:, :20].any() and not flat[:, 40:].any()
        )
    assert svc.status()["l1"]["pinned_retrieve_leases"] == 0 and svc.status()["l1"]["store_leases"] == 0


def test_slot_mappings_of_the_wrong_count_or_length_are_bad_requests(gpu_service: Any, kv: Any) -> None:
    svc, gpu = gpu_service
    tensors, layout = kv
    connect(svc, b"a", layout)
    assert isinstance(register_ipc(svc, gpu, b"a", tensors, layout), p.RegisterIpcReply)
    for sm, what in (([], "one per layer group"), (slot_bytes(39), "expected 320 bytes")):
        r = svc.handle(b"a", p.StoreIpc(tokens=token_bytes(TOKENS), slot_mapping=sm))
        assert isinstance(r, p.Error) and r.code == "bad_request" and what in r.message, r
    assert svc.status()["l1"]["store_leases"] == 0


def test_ipc_ops_need_register_ipc_and_a_mismatched_layout_is_refused(gpu_service: Any, kv: Any) -> None:
    svc, gpu = gpu_service
    tensors, layout = kv
    connect(svc, b"a", layout)
    r = svc.handle(b"a", p.StoreIpc(tokens=token_bytes(TOKENS), slot_mapping=slot_bytes(40)))
    assert isinstance(r, p.Error) and r.code == "not_registered" and "register_ipc" in r.message
    other, _ = allocate_example(**{**EXAMPLE, "head_size": 16})
    r = register_ipc(svc, gpu, b"a", other, layout)
    assert isinstance(r, p.Error) and r.code == "bad_request" and "chunk format" in r.message, r
    r = svc.handle(b"a", p.RegisterIpc(groups=[p.IpcGroup([gpu.ipc().export(tensors[0])])], event=b"x"))
    assert isinstance(r, p.Error) and r.code == "bad_request" and "64-byte" in r.message


@pytest.mark.parametrize("how", ["release_ipc", "hello", "register", "expiry", "close"])
def test_the_session_mapping_is_closed(gpu_service: Any, kv: Any, how: str) -> None:
    svc, gpu = gpu_service
    tensors, layout = kv
    connect(svc, b"a", layout)
    assert isinstance(register_ipc(svc, gpu, b"a", tensors, layout), p.RegisterIpcReply)
    assert gpu.ipc().live_views() == len(tensors) and len(gpu.streams) == 1
    if how == "release_ipc":
        assert isinstance(svc.handle(b"a", p.ReleaseIpc()), p.Ack)
    elif how == "hello":
        svc.handle(b"a", p.Hello(version=p.PROTOCOL_VERSION))
    elif how == "register":
        svc.handle(b"a", p.Register(model_id="m", formats=format_descs([layout.chunk_format])))
    elif how == "expiry":
        import time

        assert svc.sweep(time.monotonic() + 5) == 1
    else:
        svc.close(0)
    assert gpu.ipc().live_views() == 0, "the server still holds mapped KV"
    assert gpu.streams == set(), "the copy stream was not destroyed"
    assert svc.counters.ipc_closed == 1
