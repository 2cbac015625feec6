"""KV tensors and events shared between processes on one GPU: CUDA IPC, and HIP IPC from the same source.

On a GPU host the cache server does not receive KV bytes: a worker exports its KV tensors once
(:meth:`GpuIpc.export_tensor`, at register), the server maps them (:meth:`GpuIpc.open_tensor`) and
runs the backend's own gather/scatter kernel between the mapped KV and its page-locked L1. The
copies are ordered by events both processes can use (interprocess, timing disabled):

* store: the worker records its event on the forward's stream (:meth:`GpuIpc.record`) and sends
  ``prepare_store``; the server's copy stream waits for that event on the device
  (:meth:`GpuIpc.wait`), gathers, and commits when its own stream is done;
* retrieve: the server scatters on its stream and records *its* event; the worker's compute
  stream waits for it before the next forward reads the pages.

An event handle refers to the event's latest record at the time the other process waits, so an
event is recorded again only after the other side has answered for the previous record.

Handles are :data:`IPC_HANDLE_BYTES` opaque bytes: they travel in msgpack messages as ``bytes``
(:class:`ExportedTensor` is a plain frozen dataclass msgspec encodes), never pickled. A handle
names a whole runtime allocation (a segment of torch's caching allocator): the tensor is at
``offset`` inside it. Memory from a virtual-memory allocator (torch's expandable segments) has no
such handle: export raises ``RuntimeError`` naming the runtime call. A process cannot open its
own handles; the importer is always another process on the same GPU.

Shapes: a tensor is described by ``dtype`` (torch dtype name), ``shape`` and ``strides``
(elements), e.g. ``[2, num_blocks, block_size, num_kv_heads, head_size]`` for a vLLM flash layer.

May assume: torch is importable. Must not at import time: touch a GPU or load an extension.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from lmcache_gpu.kernels import GpuEvent

#: Size of every memory and event handle (both runtimes).
IPC_HANDLE_BYTES = 64


@dataclass(frozen=True)
class ExportedTensor:
    """A tensor another process maps: where it lives and how to view it.

    ``handle``: 64 bytes naming the runtime allocation holding the tensor; ``offset``: bytes from
    that allocation's base to the tensor's first element; ``device``: the exporter's GPU index (the
    importer names its own index of the same GPU); ``dtype``: torch dtype name (``"float16"``);
    ``shape`` and ``strides`` in elements.
    """

    handle: bytes
    offset: int
    device: int
    dtype: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None) if isinstance(self.dtype, str) else None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype: expected a torch dtype name such as 'float16', given {self.dtype!r}")
        return dtype

    def reach_nbytes(self) -> int:
        """Bytes from the first element to the end of the last one (0 for an empty tensor)."""
        if any(s == 0 for s in self.shape):
            return 0
        last = sum((n - 1) * st for n, st in zip(self.shape, self.strides, strict=True))
        return (last + 1) * self.torch_dtype().itemsize

    def check(self) -> None:
        """ValueError/TypeError naming the field when the description is malformed (before mapping)."""
        if not isinstance(self.handle, bytes) or len(self.handle) != IPC_HANDLE_BYTES:
            given = len(self.handle) if isinstance(self.handle, bytes) else type(self.handle).__name__
            raise ValueError(f"handle: expected {IPC_HANDLE_BYTES} bytes, given {given}")
        for name in ("offset", "device"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: expected a non-negative int, given {value!r}")
        self.torch_dtype()
        for name in ("shape", "strides"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
            ):
                raise ValueError(f"{name}: expected a tuple of non-negative ints, given {value!r}")
        if len(self.shape) != len(self.strides):
            raise ValueError(
                f"strides: expected {len(self.shape)} strides (one per axis of shape {self.shape}), "
                f"given {self.strides}"
            )


class IpcEvent(GpuEvent):
    """An interprocess event: made here (exportable) or opened from another process's handle.

    Destroyed with the object (not pooled: pooled events are not interprocess).
    """

    def __init__(self, ext: ModuleType, handle: int, device: int, *, owned: bool) -> None:
        super().__init__(ext, handle, device)
        #: True when this process created it (it may export it); False when opened from a handle
        self.owned = owned

    def __del__(self) -> None:
        handle, self.handle = getattr(self, "handle", 0), 0
        if handle:
            try:
                self._ext.event_destroy(handle)
            except RuntimeError:
                pass  # the runtime is shutting down; nothing left to free

    def __repr__(self) -> str:
        return f"IpcEvent(handle={self.handle:#x}, device={self.device}, owned={self.owned})"


class _Mapping:
    """One opened allocation; unmapped when the last tensor viewing it is gone."""

    def __init__(self, ext: ModuleType, base: int, nbytes: int, device: int) -> None:
        self._ext = ext
        self.base = base
        self.nbytes = nbytes
        self.device = device

    def __del__(self) -> None:
        base, self.base = getattr(self, "base", 0), 0
        if base:
            try:
                self._ext.ipc_mem_close(base, self.device)
            except RuntimeError:
                pass  # the runtime is shutting down; the driver unmaps at exit


class _DeviceBytes:
    """``__cuda_array_interface__`` of uint8 ``[nbytes]`` at a mapped address; keeps the mapping alive."""

    def __init__(self, address: int, nbytes: int, mapping: _Mapping) -> None:
        self._mapping = mapping
        self.__cuda_array_interface__ = {
            "shape": (nbytes,),
            "typestr": "|u1",
            "data": (address, False),
            "version": 2,
            "strides": None,
        }


class GpuIpc:
    """Export and map KV tensors and events between processes, over a GPU backend's extension."""

    def __init__(self, ext: ModuleType, backend: str) -> None:
        self._ext = ext
        self.backend = backend
        self._lock = threading.Lock()
        #: (handle, device) -> the mapping, while a tensor views it (a handle is opened once)
        self._mappings: weakref.WeakValueDictionary[tuple[bytes, int], _Mapping] = (
            weakref.WeakValueDictionary()
        )

    # ---- memory -------------------------------------------------------------------------------

    def export_tensor(self, tensor: torch.Tensor) -> ExportedTensor:
        """Describe a GPU tensor for another process: the handle of its allocation and where it is."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"tensor: expected torch.Tensor, given {type(tensor).__name__}")
        if tensor.device.type != "cuda":
            raise ValueError(
                f"tensor: expected a tensor on a {self.backend} GPU (device type cuda), given {tensor.device}"
            )
        if tensor.numel() == 0:
            raise ValueError(f"tensor: expected a non-empty tensor, given shape {tuple(tensor.shape)}")
        if any(s < 0 for s in tensor.stride()):
            raise ValueError(f"tensor: expected non-negative strides, given {tensor.stride()}")
        device = int(tensor.device.index if tensor.device.index is not None else torch.cuda.current_device())
        handle, base, _ = self._ext.ipc_mem_export(tensor.data_ptr(), device)
        return ExportedTensor(
            handle=bytes(handle),
            offset=tensor.data_ptr() - int(base),
            device=device,
            dtype=str(tensor.dtype).removeprefix("torch."),
            shape=tuple(int(s) for s in tensor.shape),
            strides=tuple(int(s) for s in tensor.stride()),
        )

    def open_tensor(self, exported: ExportedTensor, device: int | None = None) -> torch.Tensor:
        """A tensor of this process viewing another process's tensor (same bytes, no copy).

        ``device``: this process's index of the exporter's GPU (default: ``exported.device``). The
        extent (``offset`` + the bytes the shape and strides reach) is checked against the
        mapping's size as this process's runtime reports it: ValueError, nothing read or written.
        The allocation stays mapped while any tensor from it lives.
        """
        if not isinstance(exported, ExportedTensor):
            raise TypeError(f"exported: expected ExportedTensor, given {type(exported).__name__}")
        exported.check()
        index = exported.device if device is None else device
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"device: expected a non-negative GPU index, given {index!r}")
        mapping = self._open(exported.handle, index)
        reach = exported.reach_nbytes()
        if exported.offset > mapping.nbytes or reach > mapping.nbytes - exported.offset:
            raise ValueError(
                f"offset/shape/strides: the tensor reaches bytes [{exported.offset}, {exported.offset + reach}) "
                f"of an allocation of {mapping.nbytes} bytes"
            )
        dtype = exported.torch_dtype()
        if exported.offset % dtype.itemsize:
            raise ValueError(
                f"offset: expected a multiple of {dtype.itemsize} ({dtype}), given {exported.offset}"
            )
        raw = torch.as_tensor(
            _DeviceBytes(mapping.base + exported.offset, reach, mapping), device=torch.device("cuda", index)
        )
        return raw.view(dtype).as_strided(exported.shape, exported.strides)

    def _open(self, handle: bytes, device: int) -> _Mapping:
        with self._lock:
            mapping = self._mappings.get((handle, device))
            if mapping is None:
                base, nbytes = self._ext.ipc_mem_open(handle, device)
                mapping = _Mapping(self._ext, int(base), int(nbytes), device)
                self._mappings[(handle, device)] = mapping
            return mapping

    def open_mappings(self) -> int:
        """Allocations this process has mapped and not yet unmapped."""
        return int(self._ext.open_ipc_mappings())

    # ---- events -------------------------------------------------------------------------------

    def create_event(self, device: int) -> IpcEvent:
        """A new interprocess event on ``device`` (export it with :meth:`export_event`)."""
        return IpcEvent(self._ext, int(self._ext.ipc_event_create(device)), device, owned=True)

    def export_event(self, event: IpcEvent) -> bytes:
        """The 64-byte handle of an event made here by :meth:`create_event`."""
        if not isinstance(event, IpcEvent) or not event.owned:
            raise TypeError(f"event: expected an IpcEvent from create_event, given {event!r}")
        return bytes(self._ext.ipc_event_export(event.handle, event.device))

    def open_event(self, handle: bytes, device: int) -> IpcEvent:
        """Another process's event, from its 64-byte handle, on this process's index of its GPU."""
        if not isinstance(handle, bytes) or len(handle) != IPC_HANDLE_BYTES:
            given = len(handle) if isinstance(handle, bytes) else type(handle).__name__
            raise ValueError(f"handle: expected {IPC_HANDLE_BYTES} bytes, given {given}")
        return IpcEvent(self._ext, int(self._ext.ipc_event_open(handle, device)), device, owned=False)

    def record(self, event: IpcEvent, stream: int = 0) -> None:
        """Record ``event`` on ``stream`` (0: torch's current stream of the event's GPU)."""
        if not isinstance(event, IpcEvent):
            raise TypeError(f"event: expected an IpcEvent, given {type(event).__name__}")
        handle = stream or int(torch.cuda.current_stream(event.device).cuda_stream)
        self._ext.event_record_on(event.handle, handle, event.device)

    def wait(self, event: IpcEvent, stream: int = 0) -> None:
        """Work queued on ``stream`` (0: torch's current stream of the event's GPU) after this
        starts after ``event``'s latest record; the host does not wait."""
        if not isinstance(event, IpcEvent):
            raise TypeError(f"event: expected an IpcEvent, given {type(event).__name__}")
        handle = stream or int(torch.cuda.current_stream(event.device).cuda_stream)
        self._ext.stream_wait_event(handle, event.handle, event.device)

    def info(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "handle_bytes": IPC_HANDLE_BYTES,
            "open_mappings": self.open_mappings(),
        }
