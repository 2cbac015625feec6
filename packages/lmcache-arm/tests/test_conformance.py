"""The lmcache-core conformance suite run against the ``arm`` backend (needs the built extension).

Every case compares this backend's gather and scatter bit for bit with the reference backend over
every layout kind of the core registry (and vLLM's NHD shape over HND memory), in fp16, bf16, fp32
and both fp8 formats, with -1 slots and skip_prefix, on small shapes.
"""

from __future__ import annotations

from lmcache_core.testing import ConformanceSuite

pytest_plugins = ["lmcache_core.testing"]


class TestArmConformance(ConformanceSuite):
    backend_name = "arm"
    device = "cpu"
