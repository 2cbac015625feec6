"""lmcache_cuda: GPU KV kernels for lmcache-core on NVIDIA GPUs (CUDA; the same kernel source builds lmcache-rocm).

The backend registers as ``cuda`` in the ``lmcache_core.backends`` entry-point group (priority
``Priority.ACCELERATOR``, torch device type ``"cuda"``).

Modules: :mod:`lmcache_cuda.probe` (cheap availability check), :mod:`lmcache_cuda.plugin` (the hook
implementations), :mod:`lmcache_cuda.kernels` (the Python wrapper of the compiled ``lmcache_cuda._C``);
``gpu_probe``, ``gpu_kernels``, ``gpu_plugin`` and ``gpu_testing`` are shared by lmcache-cuda and
lmcache-rocm (lmcache-rocm carries them as symlinks to lmcache-cuda's files).

Importing this package is cheap: it imports neither torch nor the compiled extension.
"""

from __future__ import annotations

__version__ = "0.1.0"
