"""The tuple-per-layer and accelerator layouts (Ascend, SGLang NPU, TPU): detection, and the
reference gather compared with each engine's own indexing of its tensors (the oracle is written
from the engine's documented shape, not from the layout description)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.layout_registry import (
    ASCEND_ALIGN_BYTES,
    LayoutHints,
    allocate_example,
    detect_layout,
    flatten_kv_caches,
)
from lmcache_core.testing.cases import random_bits_

L, NB, BS = 2, 3, 4
SLOTS = [5, 0, 11, -1, 7]


def gather(kind: str, h: int, d: int, dtype: torch.dtype, **options: Any) -> tuple[Any, list[torch.Tensor]]:
    """Random engine tensors of ``kind`` and the reference's chunk sections ``[L, n, hidden_k]``."""
    tensors, hints = allocate_example(
        kind, num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=h, head_size=d, dtype=dtype, **options
    )
    flat = flatten_kv_caches(tensors)
    gen = torch.Generator().manual_seed(7)
    for t in flat:
        random_bits_(t, gen)
    layout = detect_layout(tensors, hints)
    fmt = layout.chunk_format
    out = torch.zeros(fmt.nbytes(len(SLOTS)), dtype=torch.uint8)
    reference_backend().gather(layout, flat, torch.tensor(SLOTS), out)
    return tensors, fmt.views(out, len(SLOTS))


def expect(sections: list[torch.Tensor], rows: Callable[[int, int, int, int], torch.Tensor]) -> None:
    """``rows(kind, layer, block, token)`` is the engine's row of that token; -1 slots stay 0."""
    for k, section in enumerate(sections):
        for layer in range(L):
            for i, slot in enumerate(SLOTS):
                got = section[layer, i].view(torch.uint8)
                if slot < 0:
                    assert not bool(got.any())
                    continue
                want = rows(k, layer, slot // BS, slot % BS).reshape(-1).contiguous().view(torch.uint8)
                assert torch.equal(got, want), (k, layer, i)


@pytest.mark.parametrize("variant", [None, "aligned_2m"])
def test_vllm_ascend_unequal_widths(variant: str | None) -> None:
    tensors, sections = gather("vllm_ascend", 2, 16, torch.bfloat16, head_size_v=8, variant=variant)
    assert [s.shape[-1] for s in sections] == [32, 16]
    expect(sections, lambda k, layer, b, t: tensors[layer][k][b, t])
    if variant == "aligned_2m":
        assert all(t.data_ptr() % ASCEND_ALIGN_BYTES == 0 for t in flatten_kv_caches(tensors))
        assert all(
            t.storage_offset() > 0 or t.data_ptr() % ASCEND_ALIGN_BYTES == 0
            for layer in tensors
            for t in layer
        )


@pytest.mark.parametrize("variant", [None, "dsa"])
def test_vllm_ascend_mla(variant: str | None) -> None:
    tensors, sections = gather("vllm_ascend_mla", 1, 32, torch.float16, variant=variant)
    assert [s.shape[-1] for s in sections] == ([32, 64, 128] if variant else [32, 64])
    expect(sections, lambda k, layer, b, t: tensors[layer][k][b, t])


@pytest.mark.parametrize("variant", [None, "mla"])
def test_sglang_npu(variant: str | None) -> None:
    h = 1 if variant else 3
    tensors, sections = gather("sglang_npu", h, 8, torch.float32, variant=variant)
    expect(sections, lambda k, layer, b, t: tensors[k][layer, b, t])


@pytest.mark.parametrize(
    ("dtype", "h", "d"),
    [
        (torch.bfloat16, 3, 80),
        (torch.float32, 2, 128),
        (torch.float8_e4m3fn, 3, 192),
        (torch.bfloat16, 3, 64),
        (torch.float32, 1, 64),
    ],
)
def test_tpu_inference(dtype: torch.dtype, h: int, d: int) -> None:
    tensors, sections = gather("tpu_inference", h, d, dtype)
    p = 4 // dtype.itemsize
    t0 = tensors[0]
    if d == 64:  # row of head h: [K (64) | V (64)]
        assert t0.shape == (NB, BS, -(-h // p), p, 128)
        expect(sections, lambda k, layer, b, t: torch.stack(
            [tensors[layer][b, t, j // p, j % p, 64 * k : 64 * k + 64] for j in range(h)]))  # fmt: skip
    else:  # combined head 2h + kv, channels padded to a multiple of 128
        assert t0.shape == (NB, BS, -(-2 * h // p), p, -(-d // 128) * 128)
        expect(sections, lambda k, layer, b, t: torch.stack(
            [tensors[layer][b, t, (2 * j + k) // p, (2 * j + k) % p, :d] for j in range(h)]))  # fmt: skip


@pytest.mark.parametrize("variant", [None, "transposed"])
def test_tpu_inference_mla(variant: str | None) -> None:
    tensors, sections = gather("tpu_inference_mla", 1, 72, torch.bfloat16, variant=variant)
    if variant == "transposed":
        expect(sections, lambda k, layer, b, t: tensors[layer][b, :, t])
    else:
        p = 2
        assert tensors[0].shape == (NB, 2, p, 128)
        expect(sections, lambda k, layer, b, t: tensors[layer][b, t // p, t % p, :72])


def test_tpu_scatter_leaves_padding_alone() -> None:
    """fp8 packs 4 heads a word: 3 KV heads are 6 combined heads padded to 8, 80 lanes to 128."""
    tensors, hints = allocate_example(
        "tpu_inference", num_layers=1, num_blocks=2, block_size=2, num_kv_heads=3, head_size=80,
        dtype=torch.float8_e4m3fn,
    )  # fmt: skip
    bits = tensors[0].view(torch.uint8)
    bits.fill_(0xFF)
    layout = detect_layout(tensors, hints)
    src = torch.zeros(layout.chunk_format.shape(4), dtype=torch.float8_e4m3fn)
    reference_backend().scatter(layout, tensors, torch.tensor([0, 1, 2, 3]), src)
    rows = bits.view(2, 2, 8, 128)
    assert bool((rows[..., 80:] == 0xFF).all())  # padded lanes
    assert bool((rows[:, :, 6:] == 0xFF).all())  # padded combined heads
    assert bool((rows[:, :, :6, :80] == 0).all())


def test_tuples_and_lists_of_tuples_detect_alike() -> None:
    tensors, hints = allocate_example(
        "vllm_ascend",
        num_layers=L,
        num_blocks=NB,
        block_size=BS,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float16,
    )
    as_tuples = detect_layout(tensors)  # no hints: only vllm_ascend takes (K, V) tuples of 4-D tensors
    assert detect_layout([list(layer) for layer in tensors]) == as_tuples
    assert detect_layout(tuple(tensors), hints) == as_tuples
    assert as_tuples.kind == "vllm_ascend" and as_tuples.plane_tensor == (0, 2, 1, 3)
    assert flatten_kv_caches(tensors) == [t for layer in tensors for t in layer]


def test_detection_refusals_name_the_reason() -> None:
    tensors, _ = allocate_example(
        "tpu_inference",
        num_layers=L,
        num_blocks=NB,
        block_size=BS,
        num_kv_heads=2,
        head_size=80,
        dtype=torch.bfloat16,
    )
    with pytest.raises(
        ValueError, match="tpu_inference pads heads and channels: pass num_kv_heads and head_size"
    ):
        detect_layout(tensors, LayoutHints(kind="tpu_inference"))
    with pytest.raises(ValueError, match=r"3 heads of 80 channels take \[.., 3, 2, 128\]"):
        detect_layout(tensors, LayoutHints(kind="tpu_inference", num_kv_heads=3, head_size=80))
    with pytest.raises(ValueError, match="tried only when named"):
        detect_layout(tensors)
    mla, _ = allocate_example(
        "vllm_ascend_mla",
        num_layers=L,
        num_blocks=NB,
        block_size=BS,
        num_kv_heads=1,
        head_size=32,
        dtype=torch.float16,
    )
    assert detect_layout(mla).kind == "vllm_ascend_mla"  # one head, unequal widths: MLA, not MHA
    with pytest.raises(ValueError, match="vllm_ascend takes a tuple of tensors per layer"):
        detect_layout([torch.empty(NB, BS, 2, 8)] * 2, LayoutHints(kind="vllm_ascend"))
    with pytest.raises(ValueError, match=r"takes 2 or 3 tensors per layer"):
        detect_layout([(torch.empty(NB, BS, 1, 8),)], LayoutHints(kind="vllm_ascend_mla"))
    with pytest.raises(ValueError, match="variant: expected one of \\['transposed'\\]"):
        allocate_example(
            "tpu_inference_mla",
            num_layers=1,
            num_blocks=1,
            block_size=1,
            num_kv_heads=1,
            head_size=8,
            dtype=torch.float16,
            variant="x",
        )


def test_architecture_doc_lists_every_layout() -> None:
    """docs/architecture.md lists every registry layout (``kind`` in backquotes) in its tables."""
    from pathlib import Path

    from lmcache_core.layout_registry import LAYOUT_KINDS

    doc = Path(__file__).resolve().parents[3] / "docs" / "architecture.md"
    if not doc.exists():
        pytest.skip(f"{doc} is not part of this installation (an sdist without the repository's docs)")
    text = doc.read_text()
    missing = [k for k in LAYOUT_KINDS if f"| `{k}`" not in text]
    assert not missing, f"docs/architecture.md has no table row for {missing}"
