"""Python wrapper of the GPU kernels: torch tensors in, raw pointers to the compiled ``_C``.

Every GPU backend's extension is this package's source compiled by its vendor package (e.g.
``lmcache_cuda._C`` as CUDA, ``lmcache_rocm._C`` as HIP); each vendor package makes one
:class:`GpuKernels` over its own extension (``<package>.kernels.KERNELS``).

Shapes use named axes. For a layer group described by ``layout``
(:class:`lmcache_core.layout.KVLayout`):

* ``kv_caches``: the engine's tensors on one GPU (torch device type ``cuda``, which ROCm torch
  uses too), ``layout.num_tensors`` of them, e.g. ``[2, num_blocks, block_size, num_kv_heads,
  head_size]`` per layer for ``vllm_flash_nhd`` (any kind of
  :data:`lmcache_core.layout_registry.LAYOUT_KINDS`, permuted views included);
* ``slot_mapping``: int64 ``[num_tokens]`` on the host or on the KV's GPU, chunk token -> slot
  (``block * block_size + token``), ``-1`` = skip the token;
* a chunk (``out`` / ``src``): contiguous, ``layout.chunk_format.nbytes(num_tokens)`` bytes of any
  dtype: one section ``[num_layers, num_tokens, hidden_k]`` per plane kind of ``layout.kinds``
  (``hidden_k = heads_k * width_k``), back to back (``[num_kv, num_layers, num_tokens, hidden]``
  when the kinds agree), in host memory (page-locked or not) or on the KV's GPU.

How a host chunk is reached, per direction (``host_path``): ``"mapped"``, the kernel reads or
writes the page-locked host memory directly through its device address (zero-copy, one pass over
PCIe/xGMI); ``"staged"``, the kernel works on a device staging copy and 2-D async copies move the
live token rows (two passes, the second by the DMA engines). Pageable host memory is always
staged. The defaults (gather ``mapped``, scatter ``staged``) are provisional: they must be chosen
by measurement on a GPU (``lmcache-core bench kernels``), which is still owed. Override with
``set_host_path`` or ``LMCACHE_<BACKEND>_GATHER_PATH`` / ``..._SCATTER_PATH``.

Calls are asynchronous on ``stream`` (0 = torch's current stream of the KV's device); a host
chunk may be read only after the stream (or an event recorded on it) is synchronized. Streams
and events belong to a device, and every call on them makes that device current for its
duration, never another: a thread with no device set (an L2 or lookup thread) makes no context
on GPU 0. Events come from a per-device pool; page-locked host memory is allocated with the
registering device current. The layout reaches the extension through the core's
:func:`lmcache_core.native_args.native_layout` (cached per layout and tensor set). Native code
checks geometry, extents, chunk sizes and every live slot (``lmcache_core/kv_checks.h``, copying a
device slot mapping to the host first) and raises ValueError before anything is written; the
user-facing dtype and shape checks are :class:`lmcache_core.backend.Backend`'s.

May assume: torch is importable. Must not at import time: touch a GPU, read the environment or
load anything but torch and the core's layout and native-arguments modules.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from lmcache_core.layout import KVLayout
from lmcache_core.native_args import NativeLayout, native_layout

if TYPE_CHECKING:
    from lmcache_gpu.ipc import GpuIpc

#: Ways a host chunk is reached; see the module docstring.
HOST_PATHS = ("mapped", "staged")
#: Provisional defaults, not yet measured on a GPU (owed: lmcache-core bench kernels on the lent GPU).
DEFAULT_HOST_PATH = {"gather": "mapped", "scatter": "staged"}
#: How ``alloc_host(pinned=True)`` page-locks: runtime allocation, or aligned allocation + registration.
HOST_ALLOC_METHODS = ("pinned", "registered")
DEFAULT_HOST_ALLOC = "pinned"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkJob:
    """One chunk of a multi-chunk transfer: its slot mapping, the chunk and the tokens to skip.

    ``slot_mapping``: int64 ``[num_tokens]``; ``chunk``: the contiguous chunk (see the module
    docstring); tokens ``< skip_prefix`` are not moved.
    """

    slot_mapping: torch.Tensor
    chunk: torch.Tensor
    skip_prefix: int = 0


class GpuEvent:
    """An event recorded on a stream of ``device`` (an opaque handle for ``synchronize``,
    ``query`` and stream waits); back to the extension's pool with the object."""

    def __init__(self, ext: ModuleType, handle: int, device: int) -> None:
        self._ext = ext
        self.handle = handle
        self.device = device

    def synchronize(self) -> None:
        self._ext.event_synchronize(self.handle, self.device)

    def query(self) -> bool:
        """True when the work before the event completed; never blocks."""
        return bool(self._ext.event_query(self.handle, self.device))

    def __del__(self) -> None:
        handle, self.handle = getattr(self, "handle", 0), 0
        if handle:
            try:
                self._ext.event_release(handle, self.device)
            except RuntimeError:
                pass  # the runtime is shutting down; nothing left to free

    def __repr__(self) -> str:
        return f"GpuEvent(handle={self.handle:#x}, device={self.device})"


def _env_choice(name: str, valid: Sequence[str], default: str) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    if value not in valid:
        raise ValueError(f"{name}: expected one of {list(valid)}, given {value!r}")
    return value


class GpuKernels:
    """The kernels and device hooks of one GPU backend over its compiled extension ``ext``."""

    def __init__(self, ext: ModuleType, backend: str) -> None:
        self._ext = ext
        self.backend = backend
        #: the package holding the extension, e.g. ``"lmcache_cuda"`` or ``"lmcache_rocm"``
        self.package = ext.__name__.rpartition(".")[0]
        self._host_path: dict[str, str] | None = None
        self._host_alloc: str | None = None
        #: device of every stream handle this object made or handed out (events need it)
        self._stream_device: dict[int, int] = {}
        #: the device KV was registered on (new_stream): host memory is page-locked with it current
        self.home_device: int = -1
        self._image_checked: set[int] = set()
        self._paths_logged: set[tuple[str, str]] = set()
        self._ipc: GpuIpc | None = None

    # ---- configuration ------------------------------------------------------------------------

    def _env(self, suffix: str) -> str:
        return f"LMCACHE_{self.backend.upper()}_{suffix}"

    def host_paths(self) -> dict[str, str]:
        """``{"gather": "mapped" | "staged", "scatter": ...}``: defaults, then the environment, then set_host_path."""
        if self._host_path is None:
            self._host_path = {
                op: _env_choice(self._env(f"{op.upper()}_PATH"), HOST_PATHS, DEFAULT_HOST_PATH[op])
                for op in ("gather", "scatter")
            }
        return dict(self._host_path)

    def set_host_path(self, gather: str | None = None, scatter: str | None = None) -> None:
        """Choose how host chunks are reached per direction (``"mapped"`` or ``"staged"``)."""
        paths = self.host_paths()
        for op, value in (("gather", gather), ("scatter", scatter)):
            if value is not None:
                if value not in HOST_PATHS:
                    raise ValueError(f"{op}: expected one of {list(HOST_PATHS)}, given {value!r}")
                paths[op] = value
        self._host_path = paths

    def host_alloc_method(self) -> str:
        """``"pinned"`` (runtime host allocation) or ``"registered"`` (allocation + host registration)."""
        if self._host_alloc is None:
            self._host_alloc = _env_choice(self._env("HOST_ALLOC"), HOST_ALLOC_METHODS, DEFAULT_HOST_ALLOC)
        return self._host_alloc

    # ---- pointers -----------------------------------------------------------------------------

    def _prepare(self, layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> NativeLayout:
        """Addresses, reachable bytes, plane table and per-kind geometry of ``kv_caches`` (the core's
        :func:`~lmcache_core.native_args.native_layout`, cached per layout and tensor set)."""
        return native_layout(layout, kv_caches)

    def plane_addresses(self, layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> tuple[int, ...]:
        """The pointer table the kernel indexes: byte address of each plane ``[num_kinds * num_layers]``.

        Built and checked by native code (every plane's extent inside its tensor); works for tensors
        on any device, so it is testable without a GPU.
        """
        p = self._prepare(layout, kv_caches)
        return tuple(
            self._ext.plane_addresses(
                p.tensor_address, p.tensor_nbytes, p.plane_tensor, p.plane_offset, p.dims, p.kinds
            )
        )

    def plan(
        self, layout: KVLayout, kv_caches: Sequence[torch.Tensor], chunks: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        """How the kernel would move these chunks: ``vector_bytes`` (16 where aligned, one for every
        plane kind), ``group_threads`` (threads per row), and per kind ``row_bytes``, ``run_bytes``,
        ``vecs_per_row``, ``vecs_per_run`` (lists, in ``layout.kinds`` order)."""
        p = self._prepare(layout, kv_caches)
        planes = self.plane_addresses(layout, kv_caches)
        return dict(self._ext.plan(list(planes), [c.data_ptr() for c in chunks], p.dims, p.kinds))

    # ---- kernels ------------------------------------------------------------------------------

    def _device_error(self, devices: Sequence[torch.device]) -> str | None:
        """Why tensors on ``devices`` are not all on one GPU, or None."""
        device = devices[0]
        for i, d in enumerate(devices):
            if d.type != "cuda":
                return f"kv_caches[{i}]: expected a tensor on a {self.backend} GPU (torch device type cuda), given {d}"
            if d != device:
                return f"kv_caches[{i}]: expected device {device} (as kv_caches[0]), given {d}"
        return None

    def _check_job(
        self, i: int, n_jobs: int, job: ChunkJob, chunk_name: str
    ) -> tuple[str, str, torch.Tensor, torch.Tensor]:
        """Device-independent checks of one job (what memory safety needs: native code checks the
        chunk's exact size); returns its names, chunk and contiguous slots."""
        chunk_field = chunk_name if n_jobs == 1 else f"jobs[{i}].chunk"
        slot_field = "slot_mapping" if n_jobs == 1 else f"jobs[{i}].slot_mapping"
        chunk, slots = job.chunk, job.slot_mapping
        if not isinstance(chunk, torch.Tensor):
            raise TypeError(f"{chunk_field}: expected torch.Tensor, given {type(chunk).__name__}")
        if not isinstance(slots, torch.Tensor):
            raise TypeError(f"{slot_field}: expected torch.Tensor, given {type(slots).__name__}")
        if not chunk.is_contiguous():
            raise ValueError(f"{chunk_field}: expected a contiguous tensor, given strides {chunk.stride()}")
        if slots.dtype != torch.int64 or slots.dim() != 1:
            raise TypeError(f"{slot_field}: expected a 1-D int64 tensor, given {slots.dim()}-D {slots.dtype}")
        skip = job.skip_prefix
        if isinstance(skip, bool) or not isinstance(skip, int):
            raise TypeError(f"skip_prefix: expected int, given {type(skip).__name__}")
        return chunk_field, slot_field, chunk, slots.contiguous()

    def _transfer(
        self,
        gather: bool,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        jobs: Sequence[ChunkJob],
        stream: int,
        host_path: str | None,
    ) -> list[str]:
        chunk_name = "out" if gather else "src"
        op = "gather" if gather else "scatter"
        path = host_path if host_path is not None else self.host_paths()[op]
        if path not in HOST_PATHS:
            raise ValueError(f"host_path: expected one of {list(HOST_PATHS)}, given {path!r}")
        if isinstance(stream, bool) or not isinstance(stream, int) or stream < 0:
            raise ValueError(f"stream: expected a non-negative integer handle, given {stream!r}")
        p = self._prepare(layout, kv_caches)
        checked = [self._check_job(i, len(jobs), job, chunk_name) for i, job in enumerate(jobs)]
        device_error = self._device_error(p.devices)
        if device_error is not None:
            raise ValueError(device_error)
        device = p.devices[0]
        entries = []
        for job, (chunk_field, slot_field, chunk, slots) in zip(jobs, checked, strict=True):
            for name, t in ((chunk_field, chunk), (slot_field, slots)):
                if t.device.type != "cpu" and t.device != device:
                    raise ValueError(
                        f"{name}: expected host memory (cpu) or {device} (the KV's), given {t.device}"
                    )
            on_host = slots.device.type == "cpu"
            entries.append(
                (
                    0 if on_host else slots.data_ptr(),
                    slots.data_ptr() if on_host else 0,
                    slots.numel(),
                    job.skip_prefix,
                    chunk.data_ptr(),
                    chunk.numel() * chunk.element_size(),
                    chunk.device.type != "cpu",
                )
            )
        index = device.index if device.index is not None else torch.cuda.current_device()
        handle = stream or torch.cuda.current_stream(index).cuda_stream
        # ``checked`` holds the contiguous slot tensors whose addresses are in ``entries``: alive here
        paths = list(
            self._ext.transfer(
                gather,
                index,
                p.tensor_address,
                p.tensor_nbytes,
                p.plane_tensor,
                p.plane_offset,
                p.dims,
                p.kinds,
                entries,
                HOST_PATHS.index(path),
                handle,
            )
        )
        for taken in set(paths):
            if (op, taken) not in self._paths_logged:  # once per direction and path: which one runs
                self._paths_logged.add((op, taken))
                logger.info("%s %s: host chunks %s (asked for %s)", self.backend, op, taken, path)
        return paths

    def gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        out: torch.Tensor,
        skip_prefix: int = 0,
        *,
        stream: int = 0,
        host_path: str | None = None,
    ) -> str:
        """Copy chunk tokens' KV rows from paged ``kv_caches`` into ``out``, asynchronously on ``stream``.

        ``out``: the contiguous chunk (see the module docstring); rows of tokens ``< skip_prefix``
        and of ``-1`` slots stay as they were. Checks what memory safety needs (native code: sizes,
        extents and slots); the user-facing dtype and shape checks are
        :class:`lmcache_core.backend.Backend`'s. Returns the path taken: ``"device"``, ``"mapped"``,
        ``"staged"``, ``"staged (pageable host memory)"`` or ``"nothing to move"``.
        """
        return self._transfer(
            True, layout, kv_caches, [ChunkJob(slot_mapping, out, skip_prefix)], stream, host_path
        )[0]

    def scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        slot_mapping: torch.Tensor,
        src: torch.Tensor,
        skip_prefix: int = 0,
        *,
        stream: int = 0,
        host_path: str | None = None,
    ) -> str:
        """Copy chunk rows of ``src`` into paged ``kv_caches``: the inverse of :meth:`gather`.

        Slots of tokens ``< skip_prefix`` and ``-1`` slots are never written.
        """
        return self._transfer(
            False, layout, kv_caches, [ChunkJob(slot_mapping, src, skip_prefix)], stream, host_path
        )[0]

    def gather_chunks(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        jobs: Sequence[ChunkJob],
        *,
        stream: int = 0,
        host_path: str | None = None,
    ) -> list[str]:
        """Gather several chunks, all layers of up to 32 chunks per kernel launch; paths per chunk."""
        return self._transfer(True, layout, kv_caches, list(jobs), stream, host_path)

    def scatter_chunks(
        self,
        layout: KVLayout,
        kv_caches: Sequence[torch.Tensor],
        jobs: Sequence[ChunkJob],
        *,
        stream: int = 0,
        host_path: str | None = None,
    ) -> list[str]:
        """Scatter several chunks (their slots must not overlap); paths per chunk."""
        return self._transfer(False, layout, kv_caches, list(jobs), stream, host_path)

    # ---- devices, host memory, streams, events ------------------------------------------------

    def device_count(self) -> tuple[int, str]:
        """(GPUs the runtime sees, the runtime's error text or "")."""
        count, error = self._ext.device_count()
        return int(count), str(error)

    def device_info(self, device: int = 0) -> dict[str, Any]:
        """name, arch (``sm_90`` / ``gfx90a``), multiprocessors, total_memory (bytes), can_map_host_memory."""
        return dict(self._ext.device_info(device))

    def kernel_image_error(self, device: int = 0) -> str:
        """ "" when this build has code for ``device``'s architecture (binary or PTX), else the runtime's reason.

        Makes ``device`` current for the query, which creates its context: call it only for the
        device the KV lives on (:meth:`new_stream` does, once per device).
        """
        return str(self._ext.kernel_image_error(device))

    def alloc_host(self, nbytes: int, pinned: bool = True, method: str | None = None) -> torch.Tensor:
        """uint8 ``[nbytes]`` host memory; page-locked (portable, mapped) when ``pinned``.

        ``method``: ``"pinned"`` (the runtime's host allocation) or ``"registered"`` (page-aligned
        allocation, then host registration); default ``host_alloc_method()``. The memory is freed
        when the tensor (and every view of it) is gone.
        """
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"nbytes: expected a non-negative int, given {nbytes!r}")
        kind = (method or self.host_alloc_method()) if pinned else "pageable"
        if pinned and kind not in HOST_ALLOC_METHODS:
            raise ValueError(f"method: expected one of {list(HOST_ALLOC_METHODS)}, given {kind!r}")
        if nbytes == 0:
            return torch.empty(0, dtype=torch.uint8)
        return torch.from_dlpack(self._ext.alloc_host(nbytes, kind, self.home_device))

    def host_alloc_name(self) -> str:
        """The runtime call behind page-locked allocations: ``"cudaHostAlloc"``, ``"hipHostAlloc"``, ..."""
        return str(self._ext.host_alloc_name())

    def register_host(self, tensor: torch.Tensor) -> None:
        """Page-lock an existing host tensor's memory in place (undo with :meth:`unregister_host`)."""
        if not isinstance(tensor, torch.Tensor) or tensor.device.type != "cpu":
            raise ValueError(
                f"tensor: expected a host (cpu) tensor, given {getattr(tensor, 'device', tensor)!r}"
            )
        if not tensor.is_contiguous():
            raise ValueError(f"tensor: expected a contiguous tensor, given strides {tensor.stride()}")
        self._ext.host_register(tensor.data_ptr(), tensor.numel() * tensor.element_size())

    def unregister_host(self, tensor: torch.Tensor) -> None:
        self._ext.host_unregister(tensor.data_ptr())

    def _device_index(self, device: Any) -> int:
        if device is None:
            return int(torch.cuda.current_device())
        d = torch.device(device) if not isinstance(device, int) else torch.device("cuda", device)
        if d.type != "cuda":
            raise ValueError(f"device: expected a cuda device, given {d}")
        return int(d.index) if d.index is not None else int(torch.cuda.current_device())

    def new_stream(self, device: Any = None) -> int:
        """Integer handle of a new non-blocking stream on ``device`` (default: the current GPU).

        The engine calls it once, when KV is registered: the first time for a device, this checks
        that the build has code for it (the only kernel-image query, so only the KV's device gets
        a context) and makes it the device host memory is page-locked with.
        """
        index = self._device_index(device)
        if index not in self._image_checked:
            problem = self.kernel_image_error(index)
            if problem:
                info = self.device_info(index)
                raise RuntimeError(
                    f"device: {self.backend} build has no code for GPU {index} ({info['name']}, "
                    f"{info['arch']}): {problem}. Rebuild it for this GPU (make -C packages/lmcache-"
                    f"{self.backend} install, or -Ccmake.define.CMAKE_*_ARCHITECTURES=native)"
                )
            self._image_checked.add(index)
        if self.home_device < 0:
            self.home_device = index
        handle = int(self._ext.stream_create(index))
        self._stream_device[handle] = index
        return handle

    def current_stream(self, device: Any = None) -> int:
        """Handle of torch's current stream on ``device`` (the engine's compute stream)."""
        index = self._device_index(device)
        handle = int(torch.cuda.current_stream(index).cuda_stream)
        self._stream_device[handle] = index
        return handle

    def _resolve(self, stream: int) -> tuple[int, int]:
        """``(handle, device)`` of ``stream``; 0 is torch's current stream of the current GPU."""
        if stream:
            device = self._stream_device.get(stream)
            return stream, device if device is not None else int(torch.cuda.current_device())
        index = int(torch.cuda.current_device())
        return int(torch.cuda.current_stream(index).cuda_stream), index

    def destroy_stream(self, stream: int) -> None:
        """Destroy a stream from :meth:`new_stream` after its work, with its staging buffers."""
        self._ext.stream_destroy(stream)
        self._stream_device.pop(stream, None)

    def record_event(self, stream: int = 0) -> GpuEvent:
        """Record an event on ``stream`` (0: torch's current stream of the current GPU), on the
        stream's own device."""
        handle, index = self._resolve(stream)
        return GpuEvent(self._ext, int(self._ext.event_record(handle, index)), index)

    def stream_wait_event(self, stream: int, event: GpuEvent) -> None:
        """Work queued on ``stream`` after this starts after ``event``; the host does not wait."""
        if not isinstance(event, GpuEvent):
            raise TypeError(f"event: expected a GpuEvent from record_event, given {type(event).__name__}")
        handle, index = self._resolve(stream)
        self._ext.stream_wait_event(handle, event.handle, index)

    def query_event(self, event: GpuEvent) -> bool:
        """True when ``event`` completed; never blocks."""
        if not isinstance(event, GpuEvent):
            raise TypeError(f"event: expected a GpuEvent from record_event, given {type(event).__name__}")
        return event.query()

    def synchronize(self, handle: Any = None) -> None:
        """Wait for an event from :meth:`record_event`, a stream handle (0: torch's current), or the current GPU (None)."""
        if handle is None:
            self._ext.device_synchronize(int(torch.cuda.current_device()))
        elif isinstance(handle, GpuEvent):
            handle.synchronize()
        elif isinstance(handle, int) and not isinstance(handle, bool):
            stream, index = self._resolve(handle)
            self._ext.stream_synchronize(stream, index)
        else:
            raise TypeError(
                f"handle: expected None, a GpuEvent from record_event or an int stream handle, "
                f"given {type(handle).__name__}"
            )

    def ipc(self) -> GpuIpc:
        """This backend's inter-process services (:mod:`lmcache_gpu.ipc`): KV tensors and events
        shared with another process on the same GPU (the cache server's GPU path)."""
        if self._ipc is None:
            from lmcache_gpu.ipc import GpuIpc

            self._ipc = GpuIpc(self._ext, self.backend)
        return self._ipc

    def cache_stats(self) -> dict[str, int]:
        """Resident plane tables, their uploads and reuses, staging bytes, device slot mappings
        copied, pooled events."""
        return dict(self._ext.cache_stats())

    def build_info(self) -> dict[str, Any]:
        """backend, runtime, runtime_version, archs (';'-separated), max_jobs_per_launch."""
        return dict(self._ext.build_info())
