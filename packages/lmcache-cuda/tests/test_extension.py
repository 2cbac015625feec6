"""``lmcache_cuda._C`` without a GPU: the build, native checks, pointer table, plan, host memory, wrapper, plugin, CLI.

Needs the built extension and its runtime library (CUDA), not a GPU: everything here is checked
before a runtime call, or asserts how the runtime fails when there is no device.
"""

from __future__ import annotations

from lmcache_cuda.gpu_testing import ExtensionTests


class TestCudaExtension(ExtensionTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
