"""Hook implementations of the ``cuda`` backend: one :class:`~lmcache_gpu.plugin.GpuPlugin` instance.

The probe names it as ``"lmcache_cuda.plugin:plugin"``. May assume: the probe found the extension; torch
imports. Must not at import time: touch a GPU (the runtime is first asked when the core reads the
capabilities).
"""

from __future__ import annotations

from lmcache_cuda.kernels import KERNELS
from lmcache_cuda.probe import nvidia_gpus
from lmcache_gpu.plugin import GpuPlugin

plugin = GpuPlugin(KERNELS, driver_scan=nvidia_gpus)
