"""The lmcache-core conformance suite run against the ``rocm`` backend (needs an AMD gfx90a GPU (MI200 series) and ROCm torch).

Every case compares this backend's gather and scatter bit for bit with the reference backend over
every layout kind, in fp16, bf16, fp32 and both fp8 formats, with -1 slots and skip_prefix, host
chunks from the backend's own page-locked ``alloc_host``. Without a usable GPU every test is
skipped with the probe's reason (e.g. "compiled, no device: ...").
"""

from __future__ import annotations

from lmcache_core.testing import ConformanceSuite

pytest_plugins = ["lmcache_core.testing"]


class TestRocmConformance(ConformanceSuite):
    backend_name = "rocm"
    device = "cuda"  # ROCm torch names its GPUs "cuda" too
