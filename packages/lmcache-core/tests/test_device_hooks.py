"""ForwardingHooks: a plugin built on it registers, owns all ten kernel and device hooks, and each
hook reaches the same-named method of its kernels or device with the arguments and result unchanged.

The kernels here are the reference backend's gather/scatter (the bytes are compared with the
reference backend's own result); the device is a host one that logs each call.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.backends import reference
from lmcache_core.device_hooks import ForwardingHooks
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS, allocate_example, detect_layout
from lmcache_core.plugin_api import API_1_1, Capabilities, supported_dtypes


class ReferenceKernels:
    """The reference kernels, logging the stream each call was given (it must come by keyword)."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, int]] = []

    def gather(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        out: torch.Tensor,
        skip: int,
        *,
        stream: int,
    ) -> str:
        self.streams.append(("gather", stream))
        reference.lmcache_gather(layout, kv, slots, out, skip, 0)
        return "ignored"

    def scatter(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        src: torch.Tensor,
        skip: int,
        *,
        stream: int,
    ) -> str:
        self.streams.append(("scatter", stream))
        reference.lmcache_scatter(layout, kv, slots, src, skip, 0)
        return "ignored"


class LoggedHostDevice:
    """Host memory, integer streams and threading events; every call is logged with its arguments."""

    def __init__(self) -> None:
        self.log: list[tuple[Any, ...]] = []

    def alloc_host(self, nbytes: int, pinned: bool) -> torch.Tensor:
        self.log.append(("alloc_host", nbytes, pinned))
        return torch.zeros(nbytes, dtype=torch.uint8)

    def new_stream(self, device: Any) -> int:
        self.log.append(("new_stream", device))
        return 7

    def current_stream(self, device: Any) -> int:
        self.log.append(("current_stream", device))
        return 3

    def record_event(self, stream: int) -> threading.Event:
        self.log.append(("record_event", stream))
        event = threading.Event()
        event.set()
        return event

    def stream_wait_event(self, stream: int, event: Any) -> None:
        self.log.append(("stream_wait_event", stream, event))

    def query_event(self, event: Any) -> bool:
        self.log.append(("query_event", event))
        return bool(event.is_set())

    def destroy_stream(self, stream: int) -> None:
        self.log.append(("destroy_stream", stream))

    def synchronize(self, handle: Any) -> None:
        self.log.append(("synchronize", handle))


class Forwarded(ForwardingHooks[ReferenceKernels, LoggedHostDevice]):
    """A plugin as the vendor ones are: identity hooks of its own, the rest inherited."""

    @hookimpl
    def lmcache_api_version(self) -> tuple[int, int]:
        return API_1_1

    @hookimpl
    def lmcache_capabilities(self) -> Capabilities:
        return Capabilities(layouts=frozenset(LAYOUT_KINDS), dtypes=supported_dtypes(), status="forwarded")


def _kv() -> tuple[list[torch.Tensor], KVLayout]:
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=4,
        block_size=4,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float32,
    )
    generator = torch.Generator().manual_seed(5)
    for t in kv:
        t.copy_(torch.randn(t.shape, generator=generator))
    return kv, detect_layout(kv, hints)


@pytest.fixture
def plugin() -> Forwarded:
    return Forwarded(ReferenceKernels(), LoggedHostDevice())


def test_gather_and_scatter_move_the_reference_bytes_with_the_stream_by_keyword(plugin: Forwarded) -> None:
    backend = Backend("forwarded", plugin, reference=reference_backend())
    kv, layout = _kv()
    assert backend.kernel_name(layout) == "forwarded"
    slots = torch.tensor([5, -1, 0, 12, 9, 3], dtype=torch.int64)
    chunk = torch.full((layout.chunk_format.nbytes(6),), 0xAB, dtype=torch.uint8)
    expected = chunk.clone()
    reference_backend().gather(layout, kv, slots, expected, skip_prefix=1)
    backend.gather(layout, kv, slots, chunk, skip_prefix=1, stream=7)
    assert torch.equal(chunk, expected)

    restored = [torch.zeros_like(t) for t in kv]
    want = [torch.zeros_like(t) for t in kv]
    reference_backend().scatter(layout, want, slots, chunk, skip_prefix=1)
    backend.scatter(layout, restored, slots, chunk, skip_prefix=1, stream=9)
    assert all(torch.equal(a, b) for a, b in zip(restored, want, strict=True))
    assert any(bool(t.any()) for t in restored)  # the scatter wrote something
    assert plugin.kernels.streams == [("gather", 7), ("scatter", 9)]


def test_device_hooks_pass_arguments_and_results_through(plugin: Forwarded) -> None:
    backend = Backend("forwarded", plugin, reference=reference_backend())
    buf = backend.alloc_host(64, pinned=False)
    assert (buf.dtype, tuple(buf.shape)) == (torch.uint8, (64,))
    stream = backend.new_stream("dev:1")
    event = backend.order_after_compute(stream, "dev:1")
    assert backend.query_event(event)
    backend.synchronize(event)
    backend.destroy_stream(stream)
    assert plugin.device.log == [
        ("alloc_host", 64, False),
        ("new_stream", "dev:1"),
        ("current_stream", "dev:1"),
        ("record_event", 3),
        ("stream_wait_event", 7, event),
        ("query_event", event),
        ("synchronize", event),
        ("destroy_stream", 7),
    ]


def test_one_object_may_be_both_kernels_and_device() -> None:
    class Both(ReferenceKernels, LoggedHostDevice):
        def __init__(self) -> None:
            ReferenceKernels.__init__(self)
            LoggedHostDevice.__init__(self)

    both = Both()
    plugin = ForwardingHooks(both, both)
    plugin.lmcache_synchronize(handle=None)
    assert plugin.lmcache_new_stream(device="dev:0") == 7
    assert both.log == [("synchronize", None), ("new_stream", "dev:0")]
