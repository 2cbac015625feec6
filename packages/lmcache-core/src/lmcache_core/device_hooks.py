"""Kernel and device hooks that forward to a backend's kernel object and device object.

A vendor backend whose gather/scatter live in one object (its kernels) and whose host memory,
streams and events live in another (its device; the same object is fine) subclasses
:class:`ForwardingHooks` and adds only its identity hooks (``lmcache_api_version``,
``lmcache_capabilities``): the ten kernel and device hooks of :mod:`lmcache_core.hookspecs` are
here, once, each a call of the same-named method. E.g. ``class AscendHooks(ForwardingHooks[Kernels,
Device])`` over a kernel path and an NPU device, or ``class GpuPlugin(ForwardingHooks[GpuKernels,
GpuKernels])`` whose kernels object does both. pluggy registers the inherited ``@hookimpl`` methods
of the instance.

May assume: nothing; the kernel hooks are reached only through :class:`lmcache_core.backend.Backend`,
which validated every argument. Must not: import torch or a vendor module (annotations only), so
importing it costs what :mod:`lmcache_core.hookspecs` costs (pluggy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from lmcache_core.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch

    from lmcache_core.layout import KVLayout


class TransferKernels(Protocol):
    """gather and scatter of one backend, as the hooks of the same name (``stream`` by keyword).

    Shapes as :func:`lmcache_core.hookspecs.lmcache_gather`: ``kv_caches`` the layout's tensors,
    ``slot_mapping`` int64 ``[num_tokens]`` (-1 skips), the chunk ``out``/``src`` typed
    ``[num_kinds, num_layers, num_tokens, hidden]`` or the bytes of ``layout.chunk_format``. What
    they return (e.g. the host path taken) is dropped.
    """

    def gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        out: torch.Tensor,
        skip_prefix: int,
        /,
        *,
        stream: int,
    ) -> object: ...

    def scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        src: torch.Tensor,
        skip_prefix: int,
        /,
        *,
        stream: int,
    ) -> object: ...


class DeviceOps(Protocol):
    """Host memory, streams and events of one backend, as the device hooks of the same names.

    Streams are integer handles (0: the current stream); events are whatever ``record_event``
    returns, given back unchanged to ``stream_wait_event``, ``query_event`` and ``synchronize``.
    """

    def alloc_host(self, nbytes: int, pinned: bool, /) -> torch.Tensor: ...
    def new_stream(self, device: Any, /) -> int: ...
    def current_stream(self, device: Any, /) -> int: ...
    def record_event(self, stream: int, /) -> Any: ...
    def stream_wait_event(self, stream: int, event: Any, /) -> None: ...
    def query_event(self, event: Any, /) -> bool: ...
    def destroy_stream(self, stream: int, /) -> None: ...
    def synchronize(self, handle: Any, /) -> None: ...


K = TypeVar("K", bound=TransferKernels)
D = TypeVar("D", bound=DeviceOps)


class ForwardingHooks(Generic[K, D]):
    """The kernel hooks over ``kernels`` and the device hooks over ``device`` (see the module)."""

    def __init__(self, kernels: K, device: D) -> None:
        self.kernels = kernels
        self.device = device

    @hookimpl
    def lmcache_gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        out: torch.Tensor,
        skip_prefix: int,
        stream: int,
    ) -> None:
        self.kernels.gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream=stream)

    @hookimpl
    def lmcache_scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        src: torch.Tensor,
        skip_prefix: int,
        stream: int,
    ) -> None:
        self.kernels.scatter(layout, kv_caches, slot_mapping, src, skip_prefix, stream=stream)

    @hookimpl
    def lmcache_alloc_host(self, nbytes: int, pinned: bool) -> torch.Tensor:
        return self.device.alloc_host(nbytes, pinned)

    @hookimpl
    def lmcache_new_stream(self, device: Any) -> int:
        return self.device.new_stream(device)

    @hookimpl
    def lmcache_current_stream(self, device: Any) -> int:
        return self.device.current_stream(device)

    @hookimpl
    def lmcache_record_event(self, stream: int) -> Any:
        return self.device.record_event(stream)

    @hookimpl
    def lmcache_stream_wait_event(self, stream: int, event: Any) -> None:
        self.device.stream_wait_event(stream, event)

    @hookimpl
    def lmcache_query_event(self, event: Any) -> bool:
        return self.device.query_event(event)

    @hookimpl
    def lmcache_destroy_stream(self, stream: int) -> None:
        self.device.destroy_stream(stream)

    @hookimpl
    def lmcache_synchronize(self, handle: Any) -> None:
        self.device.synchronize(handle)
