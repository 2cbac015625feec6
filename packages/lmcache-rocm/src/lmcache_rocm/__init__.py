"""lmcache_rocm: GPU KV kernels for lmcache-core on AMD GPUs (lmcache-gpu's source compiled as HIP).

The backend registers as ``rocm`` in the ``lmcache_core.backends`` entry-point group (priority
``Priority.ACCELERATOR``, torch device type ``"cuda"``).

A thin package over :mod:`lmcache_gpu`: :mod:`lmcache_rocm.probe` (cheap availability check with
the AMD KFD topology scan), :mod:`lmcache_rocm.plugin` (one :class:`lmcache_gpu.plugin.GpuPlugin`),
:mod:`lmcache_rocm.kernels` (one :class:`lmcache_gpu.kernels.GpuKernels` over the compiled
``lmcache_rocm._C``, built by this package's CMakeLists from ``lmcache_gpu.get_source()``).

Importing this package is cheap: it imports neither torch nor the compiled extension.
"""

from __future__ import annotations

__version__ = "0.1.0"
