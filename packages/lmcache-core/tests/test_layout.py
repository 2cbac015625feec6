"""KVLayout, ChunkFormat and KVCacheSpec: the plain descriptions, without any engine tensors."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import torch

from lmcache_core.layout import ChunkFormat, KVCacheSpec, KVLayout


def make_layout(**overrides: object) -> KVLayout:
    """A vllm_flash_nhd-like layout: 2 layers, 5 blocks of 4 tokens, 3 heads of 8 channels, fp16."""
    fields: dict[str, object] = dict(
        kind="vllm_flash_nhd", num_kv=2, num_layers=2, num_blocks=5, block_size=4, num_kv_heads=3,
        head_size=8, dtype="float16", element_size=2, num_tensors=2, tensor_shape=(2, 5, 4, 3, 8),
        tensor_stride=(480, 96, 24, 8, 1), plane_tensor=(0, 1, 0, 1), plane_offset=(0, 0, 480, 480),
        block_stride=96, token_stride=24, head_stride=8, channel_stride=1,
    )  # fmt: skip
    fields.update(overrides)
    return KVLayout(**fields)  # type: ignore[arg-type]


class TestChunkFormat:
    def test_shape_nbytes_tag(self) -> None:
        fmt = ChunkFormat(num_kv=2, num_layers=32, hidden=1024, dtype="bfloat16", element_size=2)
        assert fmt.shape(256) == (2, 32, 256, 1024)
        assert fmt.nbytes(256) == 2 * 32 * 256 * 1024 * 2
        assert fmt.nbytes(0) == 0
        assert fmt.tag == "kv2.L32.h1024.bfloat16"

    def test_mla_has_one_plane(self) -> None:
        fmt = ChunkFormat(num_kv=1, num_layers=3, hidden=576, dtype="float16", element_size=2)
        assert fmt.shape(5) == (1, 3, 5, 576)
        assert fmt.tag == "kv1.L3.h576.float16"

    @pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn])
    def test_nbytes_is_the_tensor_size(self, dtype: torch.dtype) -> None:
        name = str(dtype).removeprefix("torch.")
        fmt = ChunkFormat(2, 3, 40, name, dtype.itemsize)
        for n in (1, 7, 16):
            assert torch.empty(fmt.shape(n), dtype=dtype).nbytes == fmt.nbytes(n)

    def test_tags_differ_when_formats_differ(self) -> None:
        base = ChunkFormat(2, 4, 64, "float16", 2)
        others = [
            ChunkFormat(1, 4, 64, "float16", 2),
            ChunkFormat(2, 5, 64, "float16", 2),
            ChunkFormat(2, 4, 65, "float16", 2),
            ChunkFormat(2, 4, 64, "bfloat16", 2),
        ]
        assert len({base.tag, *(o.tag for o in others)}) == 5

    def test_frozen(self) -> None:
        fmt = ChunkFormat(2, 4, 64, "float16", 2)
        with pytest.raises(dataclasses.FrozenInstanceError):
            fmt.hidden = 3  # type: ignore[misc]


class TestKVLayout:
    def test_derived_fields(self) -> None:
        layout = make_layout()
        assert layout.num_slots == 20
        assert layout.hidden == 24
        assert layout.strides == (96, 24, 8, 1)
        assert layout.chunk_format == ChunkFormat(2, 2, 24, "float16", 2)

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
            "heads=3",
            "head_size=8",
            "float16",
            "(96, 24, 8, 1)",
            "run=24",
        ):
            assert part in text

    def test_plane_count_must_match(self) -> None:
        with pytest.raises(ValueError, match=r"plane_tensor/plane_offset: expected 4 entries.*given 3 and 4"):
            make_layout(plane_tensor=(0, 1, 0))

    def test_num_kv_must_be_1_or_2(self) -> None:
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
