"""The ``rocm`` probe: its answers (driven through the driver scans and torch's build), its cost, the scans.

Needs nothing but the installed package: runs without a GPU.
"""

from __future__ import annotations

from lmcache_rocm.gpu_testing import ProbeTests


class TestRocmProbe(ProbeTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
