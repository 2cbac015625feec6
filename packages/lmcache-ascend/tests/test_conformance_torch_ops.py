"""The core's conformance suite against the ``ascend`` backend's torch-ops path, on CPU tensors.

The CPU test switch (``LMCACHE_ASCEND_TORCH_OPS_ON_CPU=1``) makes the probe offer the very
torch-ops code an NPU runs without compiled kernels, serving ``cpu``; discovery, selection by
name, plugin loading and every hook go through the core as in production. Every registry layout
and variant (the NPU ones included: vllm_ascend with unequal K/V widths, MLA 512 + 64, DSA,
sglang_npu), every dtype, -1 holes, skip_prefix, two layer groups, empty chunks, device hooks.
"""

from __future__ import annotations

import pytest

from lmcache_core.testing import ConformanceSuite


@pytest.mark.usefixtures("torch_ops_on_cpu")
class TestAscendTorchOpsConformance(ConformanceSuite):
    backend_name = "ascend"
    device = "cpu"
