"""Device hooks over a STUB of ``torch.npu`` (no NPU and no torch_npu can exist on these hosts).

:class:`lmcache_ascend.device.NpuDevice` takes the ``torch.npu`` namespace as an argument; here it
gets :class:`StubNpu`, a recording stand-in with torch_npu's names (``Stream(device=)``,
``npu_stream``, ``current_stream``, ``stream()`` context, ``Event``, ``record``, ``wait_event``,
``query``, ``synchronize``). What this proves: which calls the hooks make, in which order, and that
no hook ever calls the device-wide ``torch.npu.synchronize()``; not that torch_npu behaves so
(docs/ascend.md lists this as a stub test; the NPU tests run the real one). Kernels run on CPU
tensors through the torch-ops path inside the stub stream's context.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from lmcache_ascend.device import NpuDevice
from lmcache_ascend.hooks import AscendHooks, TorchOpsKernels
from lmcache_core.backend import Backend, reference_backend
from lmcache_core.testing.cases import LAYOUT_VARIANTS, bits, make_cases, poison_


class StubStream:
    def __init__(self, log: list[str], handle: int) -> None:
        self.log, self.npu_stream = log, handle

    def wait_event(self, event: StubEvent) -> None:
        self.log.append(f"stream {self.npu_stream} waits for event {event.number}")

    def synchronize(self) -> None:
        self.log.append(f"stream {self.npu_stream} synchronize")


class StubEvent:
    def __init__(self, log: list[str], number: int) -> None:
        self.log, self.number, self.stream = log, number, None

    def record(self, stream: StubStream) -> None:
        self.stream = stream
        self.log.append(f"event {self.number} recorded on stream {stream.npu_stream}")

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        self.log.append(f"event {self.number} synchronize")


class StubNpu:
    """The names of ``torch.npu`` the device hooks use, recording every call in ``log``."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.active = 0x1000  # the current (compute) stream's aclrtStream address
        self._streams = {self.active: StubStream(self.log, self.active)}
        self._events = 0

    def Stream(self, device: Any = None) -> StubStream:
        handle = 0x1000 + 0x100 * len(self._streams)
        self._streams[handle] = StubStream(self.log, handle)
        self.log.append(f"new stream {handle} on {device}")
        return self._streams[handle]

    def current_stream(self, device: Any = None) -> StubStream:
        return self._streams[self.active]

    @contextlib.contextmanager
    def stream(self, s: StubStream) -> Iterator[None]:
        before, self.active = self.active, s.npu_stream
        self.log.append(f"enter stream {s.npu_stream}")
        try:
            yield
        finally:
            self.active = before
            self.log.append(f"leave stream {s.npu_stream}")

    def Event(self) -> StubEvent:
        self._events += 1
        return StubEvent(self.log, self._events)

    def synchronize(self) -> None:
        raise AssertionError("device-wide torch.npu.synchronize() called")


@pytest.fixture
def stub() -> StubNpu:
    return StubNpu()


@pytest.fixture
def backend(stub: StubNpu) -> Backend:
    device = NpuDevice(stub)
    plugin = AscendHooks(TorchOpsKernels(device), device, "stub torch.npu", pinned_host=True)
    return Backend("ascend", plugin, reference=reference_backend())


def test_streams_events_and_waits_name_their_stream(backend: Backend, stub: StubNpu) -> None:
    stream = backend.new_stream("npu:0")
    compute = backend.current_stream("npu:0")
    assert (stream, compute) == (0x1100, 0x1000)
    event = backend.order_after_compute(stream, "npu:0")
    assert backend.query_event(event)
    backend.synchronize(event)
    backend.synchronize(stream)
    backend.destroy_stream(stream)
    assert stub.log == [
        "new stream 4352 on npu:0",
        "event 1 recorded on stream 4096",
        "stream 4352 waits for event 1",
        "event 1 synchronize",
        "stream 4352 synchronize",
        "stream 4352 synchronize",
    ]


def test_synchronize_none_waits_stream_by_stream_never_the_device(backend: Backend, stub: StubNpu) -> None:
    first, second = backend.new_stream("npu:0"), backend.new_stream("npu:0")
    stub.log.clear()
    backend.synchronize()  # StubNpu.synchronize would raise
    assert sorted(stub.log) == sorted(f"stream {h} synchronize" for h in (first, second, 0x1000))


def test_an_unknown_stream_handle_is_a_value_error(backend: Backend) -> None:
    with pytest.raises(ValueError, match="stream: expected 0 or a handle"):
        backend.record_event(12345)


def test_kernels_run_inside_the_stream_context(backend: Backend, stub: StubNpu) -> None:
    case = next(
        c
        for c in make_cases(3, 2, [v for v in LAYOUT_VARIANTS if v.kind == "vllm_ascend_mla"])
        if c.num_tokens
    )
    kv, layout = case.random_kv()
    stream = backend.new_stream("npu:0")
    out = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    backend.gather(layout, kv, case.slot_tensor(), out, case.skip_prefix, stream)
    assert stub.log[-2:] == [f"enter stream {stream}", f"leave stream {stream}"]
    expected = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    reference_backend().gather(layout, kv, case.slot_tensor(), expected, case.skip_prefix)
    assert torch.equal(bits(out), bits(expected))


def test_capabilities_say_the_kernel_path_and_unverified(backend: Backend) -> None:
    caps = backend.capabilities
    assert caps.status == "torch-ops: stub torch.npu; unverified on Ascend hardware"
    assert caps.pinned_host and {"vllm_ascend", "vllm_ascend_mla", "sglang_npu"} <= caps.layouts


def test_alloc_host_unpinned_is_host_uint8(backend: Backend) -> None:
    buf = backend.alloc_host(64, pinned=False)
    assert (buf.dtype, tuple(buf.shape), buf.device.type) == (torch.uint8, (64,), "cpu")
