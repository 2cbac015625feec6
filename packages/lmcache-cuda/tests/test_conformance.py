"""The lmcache-core conformance suite run against the ``cuda`` backend (needs an NVIDIA GPU (sm_80 or newer) and CUDA torch).

Every case compares this backend's gather and scatter bit for bit with the reference backend over
every layout kind, in fp16, bf16, fp32 and both fp8 formats, with -1 slots and skip_prefix, host
chunks from the backend's own page-locked ``alloc_host``. Without a usable GPU every test is
skipped with the probe's reason (e.g. "compiled, no device: ...").
"""

from __future__ import annotations

from lmcache_core.testing import ConformanceSuite

pytest_plugins = ["lmcache_core.testing"]


class TestCudaConformance(ConformanceSuite):
    backend_name = "cuda"
    device = "cuda"  # ROCm torch names its GPUs "cuda" too
