"""ForwardingHooks: a plugin built on it registers, owns all ten kernel and device hooks, and each
hook reaches the same-named method of its kernels or device with the arguments and result unchanged.

The kernels here are the reference backend's gather/scatter (the bytes, for one drawn case per layout
variant, are compared with the reference backend's own result); the device is a host one that logs
each call.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.device_hooks import ForwardingHooks
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import API_1_1, Capabilities, supported_dtypes
from lmcache_core.testing.cases import Case, bits, make_cases, poison_


class ReferenceKernels:
    """The reference kernels, logging the stream each call was given (it must come by keyword)."""

    def __init__(self) -> None:
        self.streams: list[tuple[str, int]] = []
        self._reference = reference_backend()

    def gather(self, *args: Any, stream: int) -> str:
        self.streams.append(("gather", stream))
        self._reference.gather(*args)
        return "ignored"

    def scatter(self, *args: Any, stream: int) -> str:
        self.streams.append(("scatter", stream))
        self._reference.scatter(*args)
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


@pytest.fixture
def plugin() -> Forwarded:
    return Forwarded(ReferenceKernels(), LoggedHostDevice())


@pytest.mark.parametrize("case", make_cases(seed=21, count=1), ids=lambda c: c.id)
def test_gather_and_scatter_move_the_reference_bytes_with_the_stream_by_keyword(case: Case) -> None:
    plugin = Forwarded(ReferenceKernels(), LoggedHostDevice())
    backend, ref = Backend("forwarded", plugin, reference=reference_backend()), reference_backend()
    kv, layout = case.random_kv()
    assert backend.kernel_name(layout) == "forwarded"
    slots = torch.tensor(case.slot_mapping, dtype=torch.int64)
    chunk = poison_(torch.empty(layout.chunk_format.nbytes(case.num_tokens), dtype=torch.uint8))
    expected = chunk.clone()
    ref.gather(layout, kv, slots, expected, skip_prefix=case.skip_prefix)
    backend.gather(layout, kv, slots, chunk, skip_prefix=case.skip_prefix, stream=7)
    assert torch.equal(chunk, expected)

    restored, want = case.poisoned_kv()[0], case.poisoned_kv()[0]
    ref.scatter(layout, want, slots, chunk, skip_prefix=case.skip_prefix)
    backend.scatter(layout, restored, slots, chunk, skip_prefix=case.skip_prefix, stream=9)
    assert all(torch.equal(bits(a), bits(b)) for a, b in zip(restored, want, strict=True))
    untouched = case.poisoned_kv()[0]
    wrote = any(not torch.equal(bits(a), bits(b)) for a, b in zip(restored, untouched, strict=True))
    assert wrote == bool(case.live_tokens())
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
