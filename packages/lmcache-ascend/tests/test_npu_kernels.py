"""On an NPU: the compiled AscendC kernels against the torch-ops path, byte for byte.

Every NPU layout variant (vllm_ascend with unequal K/V widths and its 2 MiB-aligned variant,
vllm_ascend_mla with DSA, sglang_npu with MLA) in every dtype, with -1 holes and skip_prefix: the
same inputs through both paths on the same stream, gather chunks and scattered KV compared as
bits. Skipped where the backend cannot load (no NPU) or the build did not compile the kernels;
both are failures under ``LMCACHE_REQUIRE_BACKEND=ascend``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmcache_ascend.layouts import NPU_LAYOUTS
from lmcache_core.backend import Backend
from lmcache_core.testing.cases import LAYOUT_VARIANTS, Case, bits, float_dtypes, make_cases, poison_
from lmcache_core.testing.require import backend_cannot_run

CASES = make_cases(
    seed=14, count=2 * len(float_dtypes()), variants=[v for v in LAYOUT_VARIANTS if v.kind in NPU_LAYOUTS]
)


@pytest.fixture(scope="module")
def paths(ascend_npu_backend: Backend) -> tuple[Any, Any, int]:
    """(AscendC kernels, torch-ops kernels, stream handle) of the loaded backend."""
    backend = ascend_npu_backend
    from lmcache_ascend import ascendc, plugin
    from lmcache_ascend.hooks import TorchOpsKernels

    compiled = plugin.PLUGIN.kernels
    if not isinstance(compiled, ascendc.AscendCKernels):
        backend_cannot_run("ascend", f"AscendC kernels not loaded: {ascendc.build_status()[1]}")
    return compiled, TorchOpsKernels(plugin.PLUGIN.device), backend.new_stream(torch.device("npu"))


def _npu(kv: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="npu").copy_(t) for t in kv]


def _pinned_chunk(case: Case) -> torch.Tensor:
    return poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype, pin_memory=True))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_npu_ascendc_gather_matches_torch_ops(paths: tuple[Any, Any, int], case: Case) -> None:
    compiled, ops, stream = paths
    cpu_kv, _ = case.random_kv()
    kv = _npu(cpu_kv)
    layout = case.detect(kv)
    slots = case.slot_tensor().to("npu")
    got, want = _pinned_chunk(case), _pinned_chunk(case)
    compiled.gather(layout, kv, slots, got, case.skip_prefix, stream)
    ops.gather(layout, kv, slots, want, case.skip_prefix, stream)
    compiled._device.synchronize(stream)
    assert torch.equal(bits(got), bits(want)), case.describe()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_npu_ascendc_scatter_matches_torch_ops(paths: tuple[Any, Any, int], case: Case) -> None:
    compiled, ops, stream = paths
    cpu_kv, _ = case.poisoned_kv()
    got, want = _npu(cpu_kv), _npu(cpu_kv)
    layout = case.detect(got)
    slots = case.slot_tensor(unique=True).to("npu")
    src = case.random_chunk().pin_memory()
    compiled.scatter(layout, got, slots, src, case.skip_prefix, stream)
    ops.scatter(case.detect(want), want, slots, src, case.skip_prefix, stream)
    compiled._device.synchronize(stream)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(bits(g.cpu()), bits(w.cpu())), f"kv_caches[{i}]: {case.describe()}"
