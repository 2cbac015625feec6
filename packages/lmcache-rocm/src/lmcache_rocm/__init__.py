"""lmcache_rocm: GPU KV kernels for lmcache-core on AMD GPUs (HIP; lmcache-cuda's kernel source compiled as HIP).

The backend registers as ``rocm`` in the ``lmcache_core.backends`` entry-point group (priority
``Priority.ACCELERATOR``, torch device type ``"cuda"``).

Modules: :mod:`lmcache_rocm.probe` (cheap availability check), :mod:`lmcache_rocm.plugin` (the hook
implementations), :mod:`lmcache_rocm.kernels` (the Python wrapper of the compiled ``lmcache_rocm._C``);
``gpu_probe``, ``gpu_kernels``, ``gpu_plugin`` and ``gpu_testing`` are shared by lmcache-cuda and
lmcache-rocm (lmcache-rocm carries them as symlinks to lmcache-cuda's files).

Importing this package is cheap: it imports neither torch nor the compiled extension.
"""

from __future__ import annotations

__version__ = "0.1.0"
