"""The core's conformance suite on ``npu`` tensors (Ascend host only; skipped elsewhere with the
probe's reason, failed under ``LMCACHE_REQUIRE_BACKEND=ascend``).

Runs whichever kernel path the backend loaded: the AscendC kernels where the package build found
CANN, else the torch-ops path. Host chunks come from the backend's pinned ``alloc_host``.
"""

from __future__ import annotations

from lmcache_core.testing import ConformanceSuite


class TestNpuConformance(ConformanceSuite):
    backend_name = "ascend"
    device = "npu"
