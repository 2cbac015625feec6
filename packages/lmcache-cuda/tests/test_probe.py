"""The ``cuda`` probe: its answers (driven through the driver scans and torch's build), its cost, the scans.

Needs nothing but the installed package: runs without a GPU.
"""

from __future__ import annotations

from lmcache_cuda.gpu_testing import ProbeTests


class TestCudaProbe(ProbeTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
