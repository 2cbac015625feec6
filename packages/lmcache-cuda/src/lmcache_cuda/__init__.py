"""lmcache_cuda: GPU KV kernels for lmcache-core on NVIDIA GPUs (lmcache-gpu's source compiled as CUDA).

The backend registers as ``cuda`` in the ``lmcache_core.backends`` entry-point group (priority
``Priority.ACCELERATOR``, torch device type ``"cuda"``).

A thin package over :mod:`lmcache_gpu`: :mod:`lmcache_cuda.probe` (cheap availability check with
the NVIDIA driver scan), :mod:`lmcache_cuda.plugin` (one :class:`lmcache_gpu.plugin.GpuPlugin`),
:mod:`lmcache_cuda.kernels` (one :class:`lmcache_gpu.kernels.GpuKernels` over the compiled
``lmcache_cuda._C``, built by this package's CMakeLists from ``lmcache_gpu.get_source()``).

Importing this package is cheap: it imports neither torch nor the compiled extension.
"""

from __future__ import annotations

__version__ = "0.1.0"
