"""The layout -> native binding arguments conversion every native backend uses (issue 11.4)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.native_args import native_layout


def _nhd(dtype: torch.dtype = torch.float16) -> tuple[list[torch.Tensor], KVLayout]:
    kv, hints = allocate_example(
        "vllm_flash_nhd", num_layers=2, num_blocks=4, block_size=4, num_kv_heads=2, head_size=8, dtype=dtype
    )
    return kv, detect_layout(kv, hints)


def test_fields_match_layout_and_tensors() -> None:
    kv, layout = _nhd()
    args = native_layout(layout, kv)
    assert args.tensor_address == tuple(t.data_ptr() for t in kv)
    assert args.tensor_nbytes == tuple(t.numel() * 2 for t in kv)  # whole storages from element 0
    assert args.plane_tensor == layout.plane_tensor and args.plane_offset == layout.plane_offset
    assert args.dims == (2, 2, 4, 4, 2, 8) and args.strides == layout.strides
    assert args.element_size == 2 and args.device == torch.device("cpu")


def test_nbytes_counts_from_the_view_start() -> None:
    """A tensor that is a view into a larger storage reaches only the bytes after its start."""
    kv, layout = _nhd()
    base = torch.zeros(kv[0].numel() + 10, dtype=torch.float16)
    shifted = [base[10:].view(kv[0].shape), kv[1]]
    args = native_layout(layout, shifted)
    assert args.tensor_nbytes[0] == kv[0].numel() * 2


def test_cached_per_layout_and_tensor_set() -> None:
    kv, layout = _nhd()
    first = native_layout(layout, kv)
    assert native_layout(layout, list(kv)) is first  # same tensors, another list: a hit
    other, _ = _nhd()
    assert native_layout(layout, other) is not first  # other tensors
    equal_layout = dataclasses.replace(layout)
    again = native_layout(equal_layout, kv)
    assert again is not first and again == first  # another layout object: built again, same values


def test_refuses_what_would_make_the_integers_lie() -> None:
    kv, layout = _nhd()
    with pytest.raises(TypeError, match=r"^kv_caches: expected a non-empty list or tuple"):
        native_layout(layout, [])
    with pytest.raises(TypeError, match=r"^kv_caches\[1\]: expected torch.Tensor, given str"):
        native_layout(layout, [kv[0], "x"])  # type: ignore[list-item]
    with pytest.raises(
        ValueError, match=r"^kv_caches: expected 2 tensors for layout vllm_flash_nhd, given 1"
    ):
        native_layout(layout, kv[:1])
    with pytest.raises(
        TypeError, match=r"^kv_caches\[0\]: expected 2-byte elements \(float16\), given torch.float32"
    ):
        native_layout(layout, [t.float() for t in kv])


def test_device_is_none_when_tensors_differ() -> None:
    kv, layout = _nhd()
    mixed = [kv[0], torch.empty(kv[1].shape, dtype=kv[1].dtype, device="meta")]
    args = native_layout(layout, mixed)
    assert args.device is None and [d.type for d in args.devices] == ["cpu", "meta"]
