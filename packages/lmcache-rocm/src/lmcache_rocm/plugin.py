"""Hook implementations of the ``rocm`` backend: one :class:`~lmcache_gpu.plugin.GpuPlugin` instance.

The probe names it as ``"lmcache_rocm.plugin:plugin"``. May assume: the probe found the extension; torch
imports. Must not at import time: touch a GPU (the runtime is first asked when the core reads the
capabilities).
"""

from __future__ import annotations

from lmcache_gpu.plugin import GpuPlugin
from lmcache_rocm.kernels import KERNELS
from lmcache_rocm.probe import amd_gpus

plugin = GpuPlugin(KERNELS, driver_scan=amd_gpus)
