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

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Protocol

import torch

from lmcache_ascend import UNVERIFIED
from lmcache_core.device_hooks import DeviceOps, ForwardingHooks, TransferKernels
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import API_1_2, Capabilities, supported_dtypes

#: Backend hook API version this plugin was written against.
BUILT_AGAINST_API: tuple[int, int] = API_1_2


class Kernels(TransferKernels, Protocol):
    """A kernel path: ``name`` for reports, gather and scatter as :mod:`lmcache_ascend.torch_ops`."""

    name: str


class Device(DeviceOps, Protocol):
    """Host memory, streams and events (:class:`lmcache_ascend.device.NpuDevice`), and a context
    in which every op is enqueued on a stream."""

    def stream_context(self, handle: int) -> Any: ...


class ByDirection(ABC):
    """gather and scatter of a kernel path, both through its one ``transfer`` (``gather`` first)."""

    @abstractmethod
    def transfer(
        self, gather: bool, layout: KVLayout, kv: Sequence[torch.Tensor], slots: torch.Tensor, chunk: torch.Tensor,
        skip: int, stream: int,
    ) -> None:  # fmt: skip
        """Move the live rows of ``slots`` between ``kv`` and ``chunk`` (into ``chunk`` when ``gather``)."""

    def gather(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        out: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None:
        self.transfer(True, layout, kv, slots, out, skip, stream)

    def scatter(
        self,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        src: torch.Tensor,
        skip: int,
        stream: int,
    ) -> None:
        self.transfer(False, layout, kv, slots, src, skip, stream)


class TorchOpsKernels(ByDirection):
    """The torch-ops path (:mod:`lmcache_ascend.torch_ops`) on the device's stream."""

    name = "torch-ops"

    def __init__(self, device: Device) -> None:
        self._device = device

    def transfer(
        self, gather: bool, layout: KVLayout, kv: Sequence[torch.Tensor], slots: torch.Tensor, chunk: torch.Tensor,
        skip: int, stream: int,
    ) -> None:  # fmt: skip
        from lmcache_ascend import torch_ops

        with self._device.stream_context(stream):
            (torch_ops.gather if gather else torch_ops.scatter)(layout, kv, slots, chunk, skip)


class AscendHooks(ForwardingHooks[Kernels, Device]):
    """Hook implementations (see :mod:`lmcache_core.hookspecs`) over ``kernels`` and ``device``: the
    identity hooks here, the kernel and device hooks :class:`lmcache_core.device_hooks.ForwardingHooks`'.

    ``status``: what ``lmcache-core info`` shows after the kernel path's name; always ends with
    :data:`lmcache_ascend.UNVERIFIED`.
    """

    def __init__(self, kernels: Kernels, device: Device, status: str, pinned_host: bool) -> None:
        super().__init__(kernels, device)
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
