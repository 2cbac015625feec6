"""KVLayout, ChunkFormat and KVCacheSpec: the plain descriptions, without any engine tensors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from lmcache_core.layout import (
    Axis,
    ChunkFormat,
    ChunkSection,
    KVCacheSpec,
    KVLayout,
    PlaneKind,
    split_offset,
)


def make_layout(**overrides: object) -> KVLayout:
    """A vllm_flash_nhd-like layout: 2 layers, 5 blocks of 4 tokens, 3 heads of 8 channels, fp16."""
    fields: dict[str, object] = dict(
        kind="vllm_flash_nhd", num_kv=2, num_layers=2, num_blocks=5, block_size=4, num_kv_heads=3,
        head_size=8, dtype="float16", element_size=2, num_tensors=2, tensor_shape=(2, 5, 4, 3, 8),
        tensor_stride=(480, 96, 24, 8, 1), plane_tensor=(0, 1, 0, 1), plane_offset=(0, 0, 480, 480),
        block_stride=96, token_stride=24, head_stride=8, channel_stride=1,
    )  # fmt: skip
    fields.update(overrides)
    return KVLayout.uniform(**fields)  # type: ignore[arg-type]


class TestChunkFormat:
    def test_shape_nbytes_tag(self) -> None:
        fmt = ChunkFormat.uniform(num_kv=2, num_layers=32, hidden=1024, dtype="bfloat16", element_size=2)
        assert fmt.shape(256) == (2, 32, 256, 1024)
        assert fmt.nbytes(256) == 2 * 32 * 256 * 1024 * 2
        assert fmt.nbytes(0) == 0
        assert fmt.tag == "kv2.L32.h1024.bfloat16"

    def test_mla_has_one_plane(self) -> None:
        fmt = ChunkFormat.uniform(num_kv=1, num_layers=3, hidden=576, dtype="float16", element_size=2)
        assert fmt.shape(5) == (1, 3, 5, 576)
        assert fmt.tag == "kv1.L3.h576.float16"

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn])
    def test_nbytes_is_the_tensor_size(self, dtype: torch.dtype) -> None:
        name = str(dtype).removeprefix("torch.")
        fmt = ChunkFormat.uniform(2, 3, 40, name, dtype.itemsize)
        for n in (1, 7, 16):
            assert torch.empty(fmt.shape(n), dtype=dtype).nbytes == fmt.nbytes(n)

    def test_tags_differ_when_formats_differ(self) -> None:
        base = ChunkFormat.uniform(2, 4, 64, "float16", 2)
        others = [
            ChunkFormat.uniform(1, 4, 64, "float16", 2),
            ChunkFormat.uniform(2, 5, 64, "float16", 2),
            ChunkFormat.uniform(2, 4, 65, "float16", 2),
            ChunkFormat.uniform(2, 4, 64, "bfloat16", 2),
        ]
        assert len({base.tag, *(o.tag for o in others)}) == 5

    def test_frozen(self) -> None:
        fmt = ChunkFormat.uniform(2, 4, 64, "float16", 2)
        with pytest.raises(dataclasses.FrozenInstanceError):
            fmt.hidden = 3  # type: ignore[misc]


class TestKVLayout:
    def test_derived_fields(self) -> None:
        layout = make_layout()
        assert layout.num_slots == 20
        assert layout.hidden == 24
        assert layout.strides == (96, 24, 8, 1)
        assert layout.chunk_format == ChunkFormat.uniform(2, 2, 24, "float16", 2)

    def test_contiguous_run(self) -> None:
        assert make_layout().contiguous_run() == 24  # NHD: heads adjacent, the whole row
        hnd = make_layout(token_stride=8, head_stride=32)
        assert hnd.contiguous_run() == 8  # HND: one head at a time
        assert make_layout(num_kv_heads=1, head_stride=32, token_stride=8).contiguous_run() == 8
        assert make_layout(channel_stride=2).contiguous_run() == 1

    def test_describe_names_kind_shape_and_strides(self) -> None:
        text = make_layout().describe()
        for part in (
            "vllm_flash_nhd",
            "layers=2",
            "blocks=5",
            "block_size=4",
            "k[heads=3 width=8 float16 block 96 head 8 token (4:24) channel (8:1)]",
            "v[heads=3",
        ):
            assert part in text

    def test_plane_count_must_match(self) -> None:
        with pytest.raises(ValueError, match=r"plane_tensor/plane_offset: expected 4 entries.*given 3 and 4"):
            make_layout(plane_tensor=(0, 1, 0))

    def test_uniform_num_kv_must_be_1_or_2(self) -> None:
        with pytest.raises(ValueError, match=r"num_kv: expected 1 \(MLA\) or 2 \(K and V\), given 3"):
            make_layout(num_kv=3, plane_tensor=(0,) * 6, plane_offset=(0,) * 6)

    def test_mla_layout(self) -> None:
        mla = make_layout(
            kind="mla",
            num_kv=1,
            num_kv_heads=1,
            head_size=576,
            plane_tensor=(0, 1),
            plane_offset=(0, 0),
            block_stride=4 * 576,
            token_stride=576,
            head_stride=576,
        )
        assert mla.chunk_format.shape(3) == (1, 2, 3, 576)
        assert mla.contiguous_run() == 576

    def test_hashable_and_comparable(self) -> None:
        assert make_layout() == make_layout()
        assert len({make_layout(), make_layout(), make_layout(block_size=8)}) == 2

    def test_chunk_format_is_built_once_and_invisible_to_equality_hash_and_repr(self) -> None:
        layout, fresh = make_layout(), make_layout()
        text, key = repr(layout), hash(layout)
        fmt = layout.chunk_format
        assert layout.chunk_format is fmt  # kept, not rebuilt
        assert (layout == fresh, hash(layout), repr(layout)) == (True, key, text)
        assert "chunk_format" not in {f.name for f in dataclasses.fields(layout)}

    def test_a_replaced_layout_gets_its_own_chunk_format(self) -> None:
        layout = make_layout()
        assert layout.chunk_format == ChunkFormat.uniform(2, 2, 24, "float16", 2)  # cached now
        more_layers = dataclasses.replace(
            layout, num_layers=3, plane_tensor=(0,) * 6, plane_offset=(0, 1, 2, 3, 4, 5)
        )
        assert more_layers.chunk_format == ChunkFormat.uniform(2, 3, 24, "float16", 2)
        wider = layout.replace_geometry(num_kv_heads=4, dtype="float32", element_size=4)
        assert wider.chunk_format == ChunkFormat.uniform(2, 2, 32, "float32", 4)
        assert layout.chunk_format == ChunkFormat.uniform(2, 2, 24, "float16", 2)  # the original's kept


def kind(name: str, width: int, **overrides: object) -> PlaneKind:
    fields: dict[str, object] = dict(
        name=name, width=width, heads=1, dtype="bfloat16", element_size=2, block_stride=4 * width,
        head_stride=0, token=(Axis(4, width),), channel=(Axis(width, 1),),
    )  # fmt: skip
    fields.update(overrides)
    return PlaneKind(**fields)  # type: ignore[arg-type]


def two_kinds(a: PlaneKind, b: PlaneKind, layers: int = 2) -> KVLayout:
    """Per layer a (a, b) tuple of tensors [5 blocks, 4 tokens, ...]: plane (kind, layer) is
    tensor layer * 2 + kind."""
    return KVLayout(
        kind="test", num_layers=layers, num_blocks=5, block_size=4, kinds=(a, b), num_tensors=2 * layers,
        tensor_shapes=((5, 4, 1, a.width), (5, 4, 1, b.width)) * layers,
        tensor_strides=((4 * a.width, a.width, a.width, 1), (4 * b.width, b.width, b.width, 1)) * layers,
        plane_tensor=tuple(layer * 2 + k for k in range(2) for layer in range(layers)),
        plane_offset=(0,) * (2 * layers),
    )  # fmt: skip


class TestPlaneKinds:
    def test_split_offset_is_little_endian_mixed_radix(self) -> None:
        # vLLM CPU amx K, p = 2, head_size 8: token (16, 2), (bs/16, 16*8); channel (2, 1), (4, 32)
        token = (Axis(16, 2), Axis(2, 128))
        channel = (Axis(2, 1), Axis(4, 32))
        for t in range(32):
            for c in range(8):
                want = (t // 16) * 16 * 8 + (c // 2) * 32 + (t % 16) * 2 + c % 2
                assert split_offset(token, t) + split_offset(channel, c) == want

    def test_extent_and_offset_walk_every_level(self) -> None:
        k = kind(
            "k", 8, heads=2, head_stride=64, token=(Axis(4, 1),), channel=(Axis(8, 4),), block_stride=128
        )
        assert k.offset(1, 3, 1, 7) == 128 + 3 + 64 + 28
        assert k.extent(5) == 1 + 4 * 128 + 64 + 3 + 28
        assert k.contiguous_run() == 1  # channels strided
        assert not kind("k", 8, channel=(Axis(2, 1), Axis(4, 8))).is_simple
        assert kind("k", 8, channel=(Axis(2, 1), Axis(4, 8))).contiguous_run() == 2

    def test_padded_width_defaults_to_width_and_is_never_smaller(self) -> None:
        assert kind("k", 80).padded_width == 80
        assert kind("k", 80, padded_width=128).padded_width == 128
        with pytest.raises(ValueError, match=r"kind k: padded_width: expected >= width 80, given 64"):
            kind("k", 80, padded_width=64)

    def test_levels_must_multiply_to_width_and_block_size(self) -> None:
        with pytest.raises(
            ValueError, match=r"kind k: channel: level sizes \[2, 3\] multiply to 6, expected width 8"
        ):
            kind("k", 8, channel=(Axis(2, 1), Axis(3, 2)))
        with pytest.raises(
            ValueError, match=r"kind v: token: level sizes \[3\] multiply to 3, expected block_size 4"
        ):
            two_kinds(kind("k", 8), kind("v", 8, token=(Axis(3, 8),)))
        with pytest.raises(ValueError, match=r"channel: expected 1 to 3 levels, given 4"):
            kind("k", 16, channel=(Axis(2, 1),) * 4)

    def test_unequal_widths_flat_fields_raise_naming_the_field(self) -> None:
        layout = two_kinds(kind("nope", 512), kind("rope", 64))
        assert layout.num_kv == 2 and not layout.is_uniform
        assert layout.dtype == "bfloat16" and layout.num_kv_heads == 1  # these agree
        for name in ("head_size", "hidden", "block_stride", "token_stride"):
            with pytest.raises(
                ValueError, match=rf"layout test: {name} differs per plane kind \(nope, rope\)"
            ):
                getattr(layout, name)
        with pytest.raises(ValueError, match="tensor_shape differs per tensor; use tensor_shapes"):
            _ = layout.tensor_shape

    def test_split_axes_make_token_stride_raise(self) -> None:
        packed = kind("k", 8, token=(Axis(2, 1), Axis(2, 16)), channel=(Axis(8, 2),))
        layout = two_kinds(packed, kind("v", 8))
        with pytest.raises(ValueError, match="token_stride differs per plane kind"):
            _ = layout.strides
        with pytest.raises(ValueError, match="the token axis is split"):
            _ = packed.token_stride

    def test_unequal_widths_chunk_format_sections(self) -> None:
        fmt = two_kinds(kind("nope", 512), kind("rope", 64), layers=61).chunk_format
        assert fmt.sections == (
            ChunkSection("nope", 512, "bfloat16", 2),
            ChunkSection("rope", 64, "bfloat16", 2),
        )
        assert fmt.tag == "L61.nope512bf16.rope64bf16"
        assert not fmt.is_uniform
        assert fmt.nbytes(3) == 61 * 3 * (512 + 64) * 2
        assert fmt.token_nbytes == 61 * (512 + 64) * 2
        assert fmt.section_offsets(3) == (0, 61 * 3 * 512 * 2)
        with pytest.raises(
            ValueError, match=r"chunk format L61.nope512bf16.rope64bf16: hidden differs per section"
        ):
            fmt.shape(3)
        buf = (torch.arange(fmt.nbytes(3)) % 251).to(torch.uint8)
        nope, rope = fmt.views(buf, 3)
        assert nope.shape == (61, 3, 512) and rope.shape == (61, 3, 64)
        assert nope.dtype == rope.dtype == torch.bfloat16
        assert rope.view(torch.uint8).data_ptr() == buf.data_ptr() + 61 * 3 * 512 * 2

    def test_a_section_that_would_start_misaligned_is_refused(self) -> None:
        # one fp8 layer-row of 3 bytes before a bf16 section: odd offsets for odd token counts
        with pytest.raises(
            ValueError, match=r"sections\[1\] \(v, bfloat16\): expected to start on a multiple"
        ):
            ChunkFormat(1, (ChunkSection("k", 3, "float8_e4m3fn", 1), ChunkSection("v", 4, "bfloat16", 2)))
        ok = ChunkFormat(1, (ChunkSection("k", 4, "bfloat16", 2), ChunkSection("v", 3, "float8_e4m3fn", 1)))
        assert ok.section_offsets(3) == (0, 3 * 4 * 2)

    def test_uniform_format_keeps_todays_tag_and_bytes(self) -> None:
        fmt = make_layout().chunk_format
        assert fmt.is_uniform and fmt.tag == "kv2.L2.h24.float16"
        assert fmt.nbytes(5) == 2 * 2 * 5 * 24 * 2 and fmt.section_offsets(5) == (0, 2 * 5 * 24 * 2)


class TestKVCacheSpec:
    def test_needs_a_group(self) -> None:
        with pytest.raises(ValueError, match="groups: expected at least one KVLayout, given none"):
            KVCacheSpec(())

    def test_two_groups(self) -> None:
        a = make_layout()
        b = make_layout(
            kind="mla",
            num_kv=1,
            num_layers=3,
            block_size=2,
            num_kv_heads=1,
            head_size=576,
            plane_tensor=(0, 1, 2),
            plane_offset=(0, 0, 0),
            block_stride=1152,
            token_stride=576,
            head_stride=576,
        )
        spec = KVCacheSpec((a, b))
        assert spec.tag == "kv2.L2.h24.float16+kv1.L3.h576.float16"
        assert spec.chunk_nbytes(16) == 2 * 2 * 16 * 24 * 2 + 1 * 3 * 16 * 576 * 2
        assert KVCacheSpec((a,)).tag == a.chunk_format.tag


def test_layout_module_does_not_import_torch() -> None:
    code = "import sys, lmcache_core.layout; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
