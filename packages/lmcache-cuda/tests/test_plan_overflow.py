"""The planner's plane-extent checks against hostile layouts, without a GPU (issue 9, item 1).

A layout edited by hand (``dataclasses.replace``) with ``plane_offset`` near 2**63 and a large
``block_stride`` made ``plane_offset + extent`` wrap in the plane-fit check, so the plane "fit" and
the pointer table held addresses before or far outside the tensor. ``plan.cpp`` now computes every
extent with the overflow-checked helpers of ``kv_index.h``. ``plane_addresses`` and ``transfer``
both run ``check_layout`` before any runtime call, so these tests need the built extension only.
"""

from __future__ import annotations

import pytest
import torch

from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_cuda import _C

NB, BS, H, D = 4, 4, 2, 8


def _prepared(dtype: torch.dtype) -> tuple[list[torch.Tensor], dict[str, object]]:
    kv, hints = allocate_example(
        "vllm_flash_nhd", num_layers=2, num_blocks=NB, block_size=BS, num_kv_heads=H, head_size=D, dtype=dtype
    )
    layout = detect_layout(kv, hints)
    return kv, {
        "tensor_address": [t.data_ptr() for t in kv],
        "tensor_nbytes": [t.numel() * t.element_size() for t in kv],
        "plane_tensor": list(layout.plane_tensor),
        "plane_offset": list(layout.plane_offset),
        "dims": (2, 2, NB, BS, H, D),
        "strides": layout.strides,
        "element_size": layout.element_size,
    }


def _hostile(p: dict[str, object], variant: str) -> dict[str, object]:
    planes = len(p["plane_offset"])  # type: ignore[arg-type]
    _, token, head, channel = p["strides"]  # type: ignore[misc]
    if variant == "wrapped-end":  # every plane 64 elements before its tensor once offset * size wraps
        return {
            **p,
            "plane_offset": [2**63 - 64] * planes,
            "strides": ((2**62 + 2**10) // (NB - 1) + 1, token, head, channel),
        }
    if variant == "offset-plus-extent-wraps":
        return {**p, "plane_offset": [*p["plane_offset"][:-1], 2**63 - 2]}  # type: ignore[index]
    return {**p, "strides": (2**62, token, head, channel)}  # the extent itself overflows


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("variant", ["wrapped-end", "offset-plus-extent-wraps", "extent-overflows"])
def test_pointer_table_refuses_overflowing_planes(dtype: torch.dtype, variant: str) -> None:
    _, p = _prepared(dtype)
    assert len(_C.plane_addresses(**p)) == 4  # the unedited layout passes
    with pytest.raises(
        ValueError, match=r"^(plane_offset\[\d+\]: plane spans elements|geometry: plane extent)"
    ):
        _C.plane_addresses(**_hostile(p, variant))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
def test_transfer_refuses_before_any_runtime_call(dtype: torch.dtype) -> None:
    """``transfer`` fails in check_layout (ValueError), not at the runtime (RuntimeError, no GPU here)."""
    kv, p = _prepared(dtype)
    before = [t.clone() for t in kv]
    slots = torch.tensor([0, 1], dtype=torch.int64)
    chunk = torch.zeros(2, 2, 2, H * D, dtype=dtype)
    job = (0, slots.data_ptr(), 2, 0, chunk.data_ptr(), chunk.numel() * chunk.element_size(), False)
    bad = _hostile(p, "wrapped-end")
    with pytest.raises(ValueError, match=r"^plane_offset\[0\]: plane spans elements \[9223372036854775744, "):
        _C.transfer(True, 0, jobs=[job], host_path=0, stream=0, **bad)
    for t, b in zip(kv, before, strict=True):
        assert torch.equal(t.view(torch.uint8), b.view(torch.uint8))
