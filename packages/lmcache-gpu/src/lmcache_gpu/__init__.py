"""lmcache_gpu: what the GPU backends share - the one CUDA/HIP source and the Python around it.

A vendor package (``lmcache-cuda``, ``lmcache-rocm``) is thin: its own probe with its own driver
scan, a one-line plugin, a kernels instance and a CMakeLists that compiles this package's source.
What is here:

* the native source as package data, found through :func:`get_source` (the ``csrc`` directory:
  kernel template, launcher, runtime services, planner, binding) and :func:`get_cmake_dir` (the
  CMake package ``lmcache_gpu`` with the helpers every vendor build calls), the way
  ``lmcache_core.include_path.get_include()`` ships ``kv_index.h``;
* :mod:`lmcache_gpu.kernels` (the Python wrapper over a compiled ``<package>._C``),
  :mod:`lmcache_gpu.plugin` (the hook implementations), :mod:`lmcache_gpu.probing` (cheap answers
  for probes) and :mod:`lmcache_gpu.build_info` (what an extension was compiled for);
* :mod:`lmcache_gpu.testing`: the GPU test bases the vendor packages' tests subclass. Nothing in
  the product imports it.

No module here names a vendor: each vendor difference (driver scan, runtime library, device-code
check) is a parameter its package passes. Importing this package is cheap: the standard library
only (no torch, no extension).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent


def get_source() -> str:
    """Absolute path of the directory holding the CUDA/HIP source (``launcher.cu``, ``binding.cpp``, ...)."""
    return str(_HERE / "csrc")


def get_cmake_dir() -> str:
    """Absolute path of the directory holding ``lmcache_gpuConfig.cmake``, for ``find_package(lmcache_gpu CONFIG)``."""
    return str(_HERE / "cmake")
