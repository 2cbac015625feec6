"""``lmcache_rocm._C`` without a GPU: the build, native checks, pointer table, plan, host memory, wrapper, plugin, CLI.

Needs the built extension and its runtime library (HIP), not a GPU: everything here is checked
before a runtime call, or asserts how the runtime fails when there is no device.
"""

from __future__ import annotations

from lmcache_rocm.gpu_testing import ExtensionTests


class TestRocmExtension(ExtensionTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
