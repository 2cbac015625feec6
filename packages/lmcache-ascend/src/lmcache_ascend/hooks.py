"""The ``ascend`` backend's hook implementations over a kernel path and a device.

:class:`AscendHooks` is the plugin object the core registers (pluggy takes an instance's
``@hookimpl`` methods): its kernel hooks run ``kernels`` (the compiled AscendC kernels, or the
torch-ops path) inside ``device.stream_context(stream)``, and its device hooks are ``device``'s
(:class:`lmcache_ascend.device.NpuDevice` on an NPU). Built by :mod:`lmcache_ascend.plugin` (NPU)
and :mod:`lmcache_ascend.host` (the CPU test switch).

May assume: torch imports; the kernel hooks are reached only through
:class:`lmcache_core.backend.Backend`, which validated every argument.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import torch

from lmcache_ascend import UNVERIFIED
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import API_1_2, Capabilities, supported_dtypes

#: Backend hook API version this plugin was written against.
BUILT_AGAINST_API: tuple[int, int] = API_1_2


class Kernels(Protocol):
    """A kernel path: ``name`` for reports, gather and scatter as :mod:`lmcache_ascend.torch_ops`."""

    name: str

    def gather(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        out: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None: ...

    def scatter(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        src: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None: ...


class Device(Protocol):
    """Host memory, streams and events (:class:`lmcache_ascend.device.NpuDevice`)."""

    def alloc_host(self, nbytes: int, pinned: bool) -> torch.Tensor: ...
    def new_stream(self, device: Any) -> int: ...
    def current_stream(self, device: Any) -> int: ...
    def stream_context(self, handle: int) -> Any: ...
    def record_event(self, handle: int) -> Any: ...
    def stream_wait_event(self, handle: int, event: Any) -> None: ...
    def query_event(self, event: Any) -> bool: ...
    def destroy_stream(self, handle: int) -> None: ...
    def synchronize(self, handle: Any) -> None: ...


class TorchOpsKernels:
    """The torch-ops path (:mod:`lmcache_ascend.torch_ops`) on the device's stream."""

    name = "torch-ops"

    def __init__(self, device: Device) -> None:
        self._device = device

    def gather(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        out: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None:
        from lmcache_ascend import torch_ops

        with self._device.stream_context(stream):
            torch_ops.gather(layout, kv, slots, out, skip)

    def scatter(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        src: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None:
        from lmcache_ascend import torch_ops

        with self._device.stream_context(stream):
            torch_ops.scatter(layout, kv, slots, src, skip)


class AscendHooks:
    """Hook implementations (see :mod:`lmcache_core.hookspecs`) over ``kernels`` and ``device``.

    ``status``: what ``lmcache-core info`` shows after the kernel path's name; always ends with
    :data:`lmcache_ascend.UNVERIFIED`.
    """

    def __init__(self, kernels: Kernels, device: Device, status: str, pinned_host: bool) -> None:
        self.kernels = kernels
        self.device = device
        self._status = f"{kernels.name}: {status}; {UNVERIFIED}"
        self._pinned = pinned_host

    @hookimpl
    def lmcache_api_version(self) -> tuple[int, int]:
        return BUILT_AGAINST_API

    @hookimpl
    def lmcache_capabilities(self) -> Capabilities:
        return Capabilities(
            layouts=frozenset(LAYOUT_KINDS),
            dtypes=supported_dtypes(),
            pinned_host=self._pinned,
            status=self._status,
            extra={"kernels": self.kernels.name, "hardware": UNVERIFIED},
        )

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
        self.kernels.gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream)

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
        self.kernels.scatter(layout, kv_caches, slot_mapping, src, skip_prefix, stream)

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
