"""The layout -> native binding arguments conversion every native backend uses (issue 11.4), with
per-kind geometry flattened for ``kv_index.h`` ``kv_kind_unpack`` (issue 12)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmcache_core.layout import MAX_LEVELS, Axis, KVLayout, PlaneKind
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.native_args import KIND_FIELDS, kind_fields, native_layout


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
    assert args.dims == (2, 2, 4, 4)  # num_kinds, num_layers, num_blocks, block_size
    nhd = (2, 8, 2, 64, 8, 1, 4, 1, 1, 16, 0, 0, 1, 8, 1, 1, 1, 0, 0)
    assert args.kinds == (nhd, nhd) and args.device == torch.device("cpu")


def test_kind_fields_flatten_split_axes_in_the_header_order() -> None:
    """heads, width, element_size, block_stride, head_stride, then per axis: levels, sizes, strides
    (unused levels size 1, stride 0): what kv_index.h's kv_kind_unpack reads (LMC_KV_KIND_FIELDS)."""
    assert KIND_FIELDS == 19 and MAX_LEVELS == 3
    amx_k = PlaneKind(
        name="k",
        width=8,
        heads=2,
        dtype="bfloat16",
        element_size=2,
        block_stride=512,
        head_stride=256,
        token=(Axis(16, 2), Axis(2, 64)),
        channel=(Axis(2, 1), Axis(4, 32)),
    )
    assert kind_fields(amx_k) == (2, 8, 2, 512, 256, 2, 16, 2, 1, 2, 64, 0, 2, 2, 4, 1, 1, 32, 0)
    tpu = PlaneKind(
        name="v",
        width=64,
        heads=1,
        dtype="float32",
        element_size=4,
        block_stride=4096,
        head_stride=0,
        token=(Axis(16, 256),),
        channel=(Axis(64, 1),),
        padded_width=128,
    )
    assert kind_fields(tpu) == (1, 64, 4, 4096, 0, 1, 16, 1, 1, 256, 0, 0, 1, 64, 1, 1, 1, 0, 0)  # no padding


def test_kinds_of_unequal_width_and_element_size() -> None:
    """Separate K/V-like tensors of different dtypes: each tensor is checked against the kind whose
    planes it holds."""
    nope = PlaneKind("nope", 16, 1, "float16", 2, 64, 0, (Axis(4, 16),), (Axis(16, 1),))
    index = PlaneKind("indexer", 8, 1, "float8_e4m3fn", 1, 32, 0, (Axis(4, 8),), (Axis(8, 1),))
    kv = [torch.zeros(4, 4, 16, dtype=torch.float16), torch.zeros(4, 4, 8, dtype=torch.float8_e4m3fn)]
    layout = KVLayout(
        kind="test_two_kinds",
        num_layers=1,
        num_blocks=4,
        block_size=4,
        kinds=(nope, index),
        num_tensors=2,
        tensor_shapes=tuple(tuple(t.shape) for t in kv),
        tensor_strides=tuple(t.stride() for t in kv),
        plane_tensor=(0, 1),
        plane_offset=(0, 0),
    )
    args = native_layout(layout, kv)
    assert args.dims == (2, 1, 4, 4) and [k[:3] for k in args.kinds] == [(1, 16, 2), (1, 8, 1)]
    with pytest.raises(
        TypeError,
        match=r"^kv_caches\[1\]: expected 1-byte elements \(float8_e4m3fn, plane kind indexer, plane 1\), "
        r"given torch.float16",
    ):
        native_layout(layout, [kv[0], kv[1].to(torch.float16)])


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
        TypeError,
        match=r"^kv_caches\[0\]: expected 2-byte elements \(float16, plane kind k, plane 0\), given torch.float32",
    ):
        native_layout(layout, [t.float() for t in kv])


def test_device_is_none_when_tensors_differ() -> None:
    kv, layout = _nhd()
    mixed = [kv[0], torch.empty(kv[1].shape, dtype=kv[1].dtype, device="meta")]
    args = native_layout(layout, mixed)
    assert args.device is None and [d.type for d in args.devices] == ["cpu", "meta"]
