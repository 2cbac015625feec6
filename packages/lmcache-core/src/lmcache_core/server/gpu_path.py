"""The server's GPU byte path: a worker's KV mapped through IPC, copied by the server's GPU backend.

On a GPU host a worker registers its KV tensors by IPC handle (``register_ipc``); the server maps
them once per session (:class:`IpcMapping`) and moves chunk bytes itself, between the mapped KV
and its L1 (the shared-memory buffers, page-locked with the backend where it can), on a copy
stream of its own:

* store (``store_ipc``): the copy stream waits on the device for the worker's event (recorded on
  the forward's stream before the request), gathers, and the host waits for the copy stream
  before the chunks are published;
* retrieve (``retrieve_ipc``): scatter on the copy stream, record the server's event (the worker's
  compute stream waits for it), and the host waits for the copy stream before unpinning.

The GPU backend is duck-typed (:class:`GpuServices`): :class:`lmcache_gpu.kernels.GpuKernels`
from the package named by ``ServerConfig.gpu_backend``. Nothing here imports a vendor package.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from lmcache_core.cache_engine import chunk_views
from lmcache_core.layout import KVCacheSpec
from lmcache_core.layout_registry import LayoutHints, detect_layout
from lmcache_core.server import protocol as p

if TYPE_CHECKING:
    import torch

    from lmcache_core.layout import ChunkFormat, KVLayout

logger = logging.getLogger(__name__)


class GpuServices(Protocol):
    """What the server needs of a GPU backend (:class:`lmcache_gpu.kernels.GpuKernels`)."""

    backend: str

    def ipc(self) -> Any: ...  # lmcache_gpu.ipc.GpuIpc

    def gather(
        self, layout: KVLayout, kv_caches: Sequence[Any], slot_mapping: Any, out: Any, skip_prefix: int = 0, *,
        stream: int = 0,
    ) -> str: ...  # fmt: skip

    def scatter(
        self, layout: KVLayout, kv_caches: Sequence[Any], slot_mapping: Any, src: Any, skip_prefix: int = 0, *,
        stream: int = 0,
    ) -> str: ...  # fmt: skip

    def new_stream(self, device: Any = None) -> int: ...

    def destroy_stream(self, stream: int) -> None: ...

    def synchronize(self, handle: Any = None) -> None: ...

    def register_host(self, tensor: torch.Tensor) -> None: ...

    def unregister_host(self, tensor: torch.Tensor) -> None: ...


def load_gpu_backend(package: str) -> GpuServices:
    """``<package>.kernels.KERNELS`` (``lmcache_cuda``, ``lmcache_rocm``); ValueError naming the
    setting when it cannot be loaded or offers no IPC."""
    try:
        kernels = importlib.import_module(f"{package}.kernels").KERNELS
    except (ImportError, AttributeError) as e:
        raise ValueError(
            f"gpu_backend: expected a GPU backend package with kernels.KERNELS (lmcache_cuda, lmcache_rocm), "
            f"given {package!r} ({type(e).__name__}: {e})"
        ) from None
    if not callable(getattr(kernels, "ipc", None)):
        raise ValueError(
            f"gpu_backend: {package!r} offers no ipc() (inter-process KV); expected a GPU backend"
        )
    return kernels  # type: ignore[no-any-return]


def _hints(h: p.IpcHints) -> LayoutHints:
    return LayoutHints(
        kind=h.kind, num_kv_heads=h.num_kv_heads, head_size=h.head_size, block_size=h.block_size,
        num_layers=h.num_layers, isa=h.isa, head_size_v=h.head_size_v, variant=h.variant,
    )  # fmt: skip


def slot_tensors(data: Sequence[bytes], groups: int, num_tokens: int) -> list[torch.Tensor]:
    """Each group's slot mapping (int64 ``[num_tokens]``, host memory) from a request's bytes;
    ValueError naming ``slot_mapping`` when the count or a length is off."""
    import torch

    if len(data) != groups:
        raise ValueError(f"slot_mapping: expected one per layer group ({groups}), given {len(data)}")
    out = []
    for i, raw in enumerate(data):
        if len(raw) != 8 * num_tokens:
            raise ValueError(
                f"slot_mapping[{i}]: expected {8 * num_tokens} bytes (int64 LE per token of {num_tokens}), "
                f"given {len(raw)}"
            )
        out.append(torch.from_numpy(np.frombuffer(raw, dtype="<i8").astype(np.int64)))
    return out


class IpcMapping:
    """One session's mapped KV (per layer group: tensors and layout), the worker's event opened
    here, the server's own event, and the copy stream. :meth:`close` unmaps (the mappings go
    with the last tensor viewing them).

    Each group's layout is checked at mapping time to give the registered chunk format (same
    tag), so the chunk views come from the mapped layouts (:func:`~lmcache_core.cache_engine.chunk_views`);
    a new registration closes the mapping (``CacheService``), so the two never drift apart."""

    def __init__(self, gpu: GpuServices, req: p.RegisterIpc, formats: tuple[ChunkFormat, ...]) -> None:
        ipc = gpu.ipc()
        # the description type open_tensor takes lives beside the ipc object (lmcache_gpu.ipc);
        # found through it, so the core names no vendor package
        exported_type = sys.modules[type(ipc).__module__].ExportedTensor

        if len(req.groups) != len(formats):
            raise ValueError(
                f"groups: expected one per registered chunk format ({len(formats)}), given {len(req.groups)}"
            )
        self.gpu = gpu
        self.ipc = ipc
        devices = {t.device for g in req.groups for t in g.tensors}
        if len(devices) != 1:
            raise ValueError(f"groups: expected every tensor on one GPU, given devices {sorted(devices)}")
        self.device = req.device if req.device >= 0 else devices.pop()
        self.groups: list[list[Any]] = []
        self.layouts: list[KVLayout] = []
        for gi, (g, fmt) in enumerate(zip(req.groups, formats, strict=True)):
            if len(g.tensors) % g.per_layer:
                raise ValueError(
                    f"groups[{gi}].tensors: expected a multiple of per_layer ({g.per_layer}), given {len(g.tensors)}"
                )
            flat = [
                ipc.open_tensor(
                    exported_type(t.handle, t.offset, t.device, t.dtype, tuple(t.shape), tuple(t.strides)),
                    self.device,
                )
                for t in g.tensors
            ]
            nested: list[Any] = (
                flat
                if g.per_layer == 1
                else [tuple(flat[i : i + g.per_layer]) for i in range(0, len(flat), g.per_layer)]
            )
            layout = detect_layout(nested, _hints(g.hints))
            if layout.chunk_format.tag != fmt.tag:
                raise ValueError(
                    f"groups[{gi}]: the mapped KV's chunk format is {layout.chunk_format.tag}, "
                    f"registered {fmt.tag}"
                )
            self.groups.append(flat)
            self.layouts.append(layout)
        self.spec = KVCacheSpec(tuple(self.layouts))
        self.tensors = sum(len(g) for g in self.groups)
        self.worker_event = ipc.open_event(req.event, self.device)
        self.event = ipc.create_event(self.device)
        self.event_handle: bytes = ipc.export_event(self.event)
        self.stream = gpu.new_stream(self.device)

    def gather(self, jobs: Sequence[tuple[torch.Tensor, int, int]], slots: Sequence[torch.Tensor]) -> None:
        """After the worker's event: gather each ``(buffer, start, end)`` token range into its
        buffer; returns when the bytes are there."""
        self.ipc.wait(self.worker_event, self.stream)
        for buffer, start, end in jobs:
            for layout, kv, sm, view in zip(
                self.layouts, self.groups, slots, chunk_views(self.spec, buffer, end - start), strict=True
            ):
                self.gpu.gather(layout, kv, sm[start:end], view, 0, stream=self.stream)
        self.gpu.synchronize(self.stream)

    def scatter(
        self, jobs: Sequence[tuple[torch.Tensor, int, int]], slots: Sequence[torch.Tensor], skip: int
    ) -> None:
        """Scatter each ``(buffer, start, end)`` into the mapped KV (tokens before ``skip`` not
        written), record the server's event, and return when the copy stream is done."""
        for buffer, start, end in jobs:
            for layout, kv, sm, view in zip(
                self.layouts, self.groups, slots, chunk_views(self.spec, buffer, end - start), strict=True
            ):
                self.gpu.scatter(layout, kv, sm[start:end], view, max(0, skip - start), stream=self.stream)
        self.ipc.record(self.event, self.stream)
        self.gpu.synchronize(self.stream)

    def close(self) -> None:
        """Drop the mapped tensors and events, and the copy stream (idempotent)."""
        stream, self.stream = self.stream, 0
        if stream:
            try:
                self.gpu.synchronize(stream)
                self.gpu.destroy_stream(stream)
            except RuntimeError as e:  # a device gone bad: the mappings are dropped regardless
                logger.warning("closing the IPC copy stream: %s", e)
        self.groups = []
        self.layouts = []
        self.worker_event = None
        self.event = None
