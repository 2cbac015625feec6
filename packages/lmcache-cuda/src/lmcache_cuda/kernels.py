"""The cuda backend's kernels: one :class:`~lmcache_gpu.kernels.GpuKernels` over ``lmcache_cuda._C``.

``KERNELS.gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream=...)`` and the rest are
documented on :class:`~lmcache_gpu.kernels.GpuKernels` (shapes with named axes, host paths, streams).

May assume: torch imports and the extension is built. Must not at import time: touch a GPU (loading
``_C`` loads the CUDA runtime library but makes no runtime call).
"""

from __future__ import annotations

from lmcache_cuda import _C
from lmcache_gpu.kernels import GpuKernels

#: The one instance of this backend: host-path settings and the pointer cache are per process.
KERNELS = GpuKernels(_C, "cuda")
