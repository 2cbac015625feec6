"""Detecting each registry kind from engine-shaped tensors; hints, ambiguity and bad input.

Expected strides are written out by hand from each kind's documented tensor shape with
2 layers, 5 blocks, block_size 4, 3 heads, head_size 8 (latent 576 for mla).
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from lmcache_core.layout_registry import LAYOUT_KINDS, LayoutHints, allocate_example, detect_layout

L, NB, BS, H, D = 2, 5, 4, 3, 8


def kv_fields(
    tensor_shape: tuple[int, ...],
    strides: tuple[int, ...],
    plane_offset: tuple[int, ...],
    run: int,
    **fields: Any,
) -> dict[str, Any]:
    """Expected KVLayout fields (``strides``: block, token, head, channel; ``run``: the contiguous
    run) of a K/V layout with one tensor per layer (``L`` layers, ``NB`` blocks of ``BS`` tokens,
    ``H`` heads of ``D``), with ``fields`` overriding those."""
    base = dict(num_kv=2, num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=H, head_size=D,
                num_tensors=L, plane_tensor=(0, 1, 0, 1))  # fmt: skip
    return (
        base | dict(tensor_shape=tensor_shape, strides=strides, plane_offset=plane_offset, run=run) | fields
    )


# kind, physical_hnd -> expected KVLayout fields
# fmt: off
EXPECTED: dict[tuple[str, bool], dict[str, Any]] = {
    ("vllm_flash_nhd", False): kv_fields((2, NB, BS, H, D), (96, 24, 8, 1), (0, 0, 480, 480), H * D),
    # memory [2, NB, H, BS, D] seen through the NHD shape
    ("vllm_flash_nhd", True): kv_fields((2, NB, BS, H, D), (96, 8, 32, 1), (0, 0, 480, 480), D),
    ("vllm_flash_hnd", False): kv_fields((2, NB, H, BS, D), (96, 8, 32, 1), (0, 0, 480, 480), D),
    ("flashinfer", False): kv_fields((NB, 2, BS, H, D), (192, 24, 8, 1), (0, 0, 96, 96), H * D),
    ("mla", False): kv_fields((NB, BS, 576), (2304, 576, 576, 1), (0, 0), 576,
                              num_kv=1, num_kv_heads=1, head_size=576, plane_tensor=(0, 1)),
    # token pool: NB*BS=20 slots of block_size 1; K tensors then V tensors
    ("sglang", False): kv_fields((20, H, D), (24, 0, 8, 1), (0, 0, 0, 0), H * D,
                                 num_blocks=20, block_size=1, num_tensors=2 * L, plane_tensor=(0, 1, 2, 3)),
    # one tensor [NB, L, 2, H, BS, D]: plane (kv, layer) at kv*96 + layer*192
    ("trtllm", False): kv_fields((NB, L, 2, H, BS, D), (384, 8, 32, 1), (0, 192, 96, 288), D,
                                 num_tensors=1, plane_tensor=(0, 0, 0, 0)),
}
# fmt: on


def example(
    kind: str,
    physical_hnd: bool = False,
    dtype: torch.dtype = torch.float16,
) -> tuple[list[torch.Tensor], LayoutHints]:
    heads, size = (1, 576) if kind == "mla" else (H, D)
    blocks, block_size = (NB * BS, 1) if kind == "sglang" else (NB, BS)
    return allocate_example(
        kind,
        num_layers=L,
        num_blocks=blocks,
        block_size=block_size,
        num_kv_heads=heads,
        head_size=size,
        dtype=dtype,
        physical_hnd=physical_hnd,
    )


#: Kinds whose planes differ per kind, tested in their own files: the vLLM CPU orders
#: (integrations/test_vllm_cpu_order.py) and the tuple and accelerator layouts
#: (test_layout_registry_accel.py).
OTHER_KINDS = {
    "vllm_cpu", "vllm_cpu_amx", "vllm_cpu_bfmmla", "vllm_ascend", "vllm_ascend_mla", "sglang_npu",
    "tpu_inference", "tpu_inference_mla",
}  # fmt: skip


def test_every_kind_has_expectations() -> None:
    assert {k for k, _ in EXPECTED} | OTHER_KINDS == set(LAYOUT_KINDS)


@pytest.mark.parametrize(
    ("kind", "physical_hnd"), list(EXPECTED), ids=[f"{k}{'+hnd' * p}" for k, p in EXPECTED]
)
def test_detect_from_allocated_example(kind: str, physical_hnd: bool) -> None:
    tensors, hints = example(kind, physical_hnd, torch.bfloat16)
    want = EXPECTED[(kind, physical_hnd)]
    layout = detect_layout(tensors, hints)
    assert layout.kind == kind
    got = dict(
        num_kv=layout.num_kv, num_layers=layout.num_layers, num_blocks=layout.num_blocks,
        block_size=layout.block_size, num_kv_heads=layout.num_kv_heads, head_size=layout.head_size,
        num_tensors=layout.num_tensors, tensor_shape=layout.tensor_shape, strides=layout.strides,
        plane_tensor=layout.plane_tensor, plane_offset=layout.plane_offset, run=layout.contiguous_run(),
    )  # fmt: skip
    assert got == want
    assert (layout.dtype, layout.element_size) == ("bfloat16", 2)
    assert layout.tensor_stride == tuple(tensors[0].stride())
    assert len(tensors) == layout.num_tensors
    assert tensors[0].dim() == LAYOUT_KINDS[kind].ndim
    # the same tensors with only the kind as a hint give the same description
    assert detect_layout(tensors, LayoutHints(kind=kind)) == layout
    assert layout.is_uniform


@pytest.mark.parametrize("kind", ["vllm_cpu", "trtllm"])
def test_unique_rank_needs_no_hints(kind: str) -> None:
    tensors, hints = example(kind)
    assert detect_layout(tensors) == detect_layout(tensors, hints)
    assert detect_layout(tuple(tensors)).kind == kind


@pytest.mark.parametrize("kind", ["vllm_flash_nhd", "vllm_flash_hnd", "flashinfer"])
def test_five_d_shapes_told_apart_by_heads_and_block_size(kind: str) -> None:
    tensors, _ = example(kind)
    layout = detect_layout(tensors, LayoutHints(num_kv_heads=H, block_size=BS))
    assert (layout.kind, layout.num_kv_heads, layout.block_size) == (kind, H, BS)


def test_three_d_shapes_told_apart() -> None:
    mla, _ = example("mla")
    assert detect_layout(mla, LayoutHints(block_size=BS)).kind == "mla"
    sglang, _ = example("sglang")
    assert detect_layout(sglang, LayoutHints(num_kv_heads=H)).kind == "sglang"


@pytest.mark.parametrize(
    ("kind", "match", "fragments"),
    [
        ("vllm_flash_nhd", "fits several layouts",
         ["vllm_flash_nhd", "vllm_flash_hnd", "LayoutHints(kind=...)", "num_kv_heads", "block_size"]),
        ("mla", "expected a known paged layout",
         ["pass block_size or kind", "pass num_kv_heads or kind", str((NB, BS, 576))]),
    ],
    ids=["5-D: names the layouts it fits and the hints", "3-D: names the hint each layout needs and the shape"],
)  # fmt: skip
def test_ambiguous_shape_asks_for_hints(kind: str, match: str, fragments: list[str]) -> None:
    tensors, _ = example(kind)
    with pytest.raises(ValueError, match=match) as e:
        detect_layout(tensors)
    for fragment in fragments:
        assert fragment in str(e.value)


def test_unknown_kind_lists_kinds() -> None:
    tensors, _ = example("vllm_flash_nhd")
    for call in (
        lambda: detect_layout(tensors, LayoutHints(kind="paged_nope")),
        lambda: allocate_example(
            "paged_nope",
            num_layers=1,
            num_blocks=1,
            block_size=1,
            num_kv_heads=1,
            head_size=1,
            dtype=torch.float16,
        ),
    ):
        with pytest.raises(ValueError, match=r"layout kind: expected one of .*given 'paged_nope'") as e:
            call()
        for kind in LAYOUT_KINDS:
            assert repr(kind) in str(e.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [("num_kv_heads", H + 1), ("head_size", D * 2), ("block_size", BS + 1), ("num_layers", 7)],
)
@pytest.mark.parametrize("kind", ["vllm_flash_nhd", "trtllm", "sglang"])
def test_mismatching_hint_rejected(kind: str, field: str, value: int) -> None:
    tensors, hints = example(kind)
    if kind == "sglang" and field == "block_size":
        value = 2
    bad = LayoutHints(**{**hints.__dict__, field: value})
    with pytest.raises(
        ValueError, match=rf"do not fit layout {kind} .*{field}: hint says {value}, tensor shape gives"
    ):
        detect_layout(tensors, bad)


def test_mismatching_hint_without_kind_finds_nothing() -> None:
    tensors, _ = example("vllm_cpu")
    with pytest.raises(ValueError, match="num_kv_heads: hint says 9"):
        detect_layout(tensors, LayoutHints(num_kv_heads=9))


def test_kv_caches_must_be_a_sequence() -> None:
    tensors, hints = example("vllm_flash_nhd")
    with pytest.raises(TypeError, match="kv_caches: expected a list or tuple of tensors, given Tensor"):
        detect_layout(tensors[0], hints)  # type: ignore[arg-type]


def test_empty_and_non_tensor_input() -> None:
    with pytest.raises(ValueError, match="given 0 tensor"):
        detect_layout([])
    with pytest.raises(ValueError, match="kv_caches is empty"):
        detect_layout([], LayoutHints(kind="mla"))
    tensors, hints = example("vllm_flash_nhd")
    with pytest.raises(TypeError, match=r"kv_caches\[1\]: expected torch.Tensor, given str"):
        detect_layout([tensors[0], "layer1"], hints)  # type: ignore[list-item]


def test_tensors_must_agree() -> None:
    tensors, _ = example("vllm_flash_nhd")
    for odd in (tensors[1].to(torch.float32), tensors[1][:, :3], tensors[1].transpose(2, 3).contiguous()):
        with pytest.raises(ValueError, match=re.escape("kv_caches[1] differs from kv_caches[0]")):
            detect_layout([tensors[0], odd], LayoutHints(kind="vllm_flash_nhd"))


def test_wrong_rank_and_axis_sizes() -> None:
    mla, _ = example("mla")
    with pytest.raises(ValueError, match=r"vllm_flash_nhd needs 5-D tensors, kv_caches\[0\] is 3-D"):
        detect_layout(mla, LayoutHints(kind="vllm_flash_nhd"))
    three = [torch.empty(3, NB, BS, H, D)]
    with pytest.raises(ValueError, match=r"axis 0 must be 2 \(K, V\), is 3"):
        detect_layout(three, LayoutHints(kind="vllm_flash_nhd"))
    with pytest.raises(ValueError, match=r"axis 1 must be 2 \(K, V\), is 5"):
        detect_layout([torch.empty(NB, 5, BS, H, D)], LayoutHints(kind="flashinfer"))
    with pytest.raises(ValueError, match="last axis must be 2\\*head_size \\(even\\), is 7"):
        detect_layout([torch.empty(NB, H, BS, 7)], LayoutHints(kind="vllm_cpu"))


def test_vllm_cpu_needs_contiguous_heads() -> None:
    strided = torch.empty(NB, H, 2 * BS, 2 * D)[:, :, ::2]
    with pytest.raises(ValueError, match="vllm_cpu needs each head's"):
        detect_layout([strided], LayoutHints(kind="vllm_cpu"))


def test_layer_count_rules() -> None:
    trt, _ = example("trtllm")
    with pytest.raises(ValueError, match="trtllm keeps all layers in one tensor, given 2"):
        detect_layout([trt[0], trt[0]], LayoutHints(kind="trtllm"))
    sglang, _ = example("sglang")
    with pytest.raises(ValueError, match=r"sglang needs K and V per layer \(an even count\), given 3"):
        detect_layout(sglang[:3], LayoutHints(kind="sglang"))


def test_allocator_argument_errors() -> None:
    with pytest.raises(ValueError, match="num_kv_heads: mla has one latent head, given 2"):
        allocate_example(
            "mla", num_layers=1, num_blocks=2, block_size=2, num_kv_heads=2, head_size=8, dtype=torch.float16
        )
    with pytest.raises(ValueError, match="block_size: sglang token pools have block_size 1, given 4"):
        allocate_example(
            "sglang",
            num_layers=1,
            num_blocks=2,
            block_size=4,
            num_kv_heads=2,
            head_size=8,
            dtype=torch.float16,
        )


def test_allocate_example_returns_matching_hints() -> None:
    tensors, hints = example("flashinfer")
    assert hints == LayoutHints(kind="flashinfer", num_kv_heads=H, head_size=D, block_size=BS, num_layers=L)
    assert all(t.dtype == torch.float16 and t.device.type == "cpu" for t in tensors)


def test_registry_entries_describe_their_tensors() -> None:
    for name, kind in LAYOUT_KINDS.items():
        assert kind.name == name
        assert kind.axes.startswith(("[", "per layer ("))
    assert [k for k, v in LAYOUT_KINDS.items() if v.mla] == ["mla", "vllm_ascend_mla", "tpu_inference_mla"]
