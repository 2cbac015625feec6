"""validation.check_transfer for numpy KV: numpy int64 slot mappings and host chunks, checked
through the array adapter; torch KV keep their torch-only rules (test_validation.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.testing.numpy_oracle import numpy_like
from lmcache_core.validation import check_transfer

L, NB, BS, H, D = 2, 5, 4, 3, 8  # 20 slots, hidden 24


def numpy_nhd() -> tuple[list[np.ndarray], KVLayout]:
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=L,
        num_blocks=NB,
        block_size=BS,
        num_kv_heads=H,
        head_size=D,
        dtype=torch.float16,
    )
    for t in kv:
        t.zero_()
    return [numpy_like(t) for t in kv], detect_layout(kv, hints)


def chunk(num_tokens: int = 3) -> np.ndarray:
    return np.zeros((2, L, num_tokens, H * D), np.float16)


SLOTS = np.array([0, 5, 19], np.int64)


def test_numpy_kv_take_numpy_slots_and_numpy_or_host_torch_chunks() -> None:
    kv, layout = numpy_nhd()
    assert check_transfer(layout, kv, SLOTS, "out", chunk(), 0) == "numpy"
    host = torch.zeros(2, L, 3, H * D, dtype=torch.float16)
    assert check_transfer(layout, kv, SLOTS, "src", host, 1) == "numpy"


def test_torch_slot_mapping_for_numpy_kv_is_a_type_error() -> None:
    kv, layout = numpy_nhd()
    with pytest.raises(
        TypeError,
        match=r"^slot_mapping: expected numpy.ndarray \(the KV are numpy arrays\), given torch.Tensor$",
    ):
        check_transfer(layout, kv, torch.from_numpy(SLOTS), "out", chunk(), 0)


def test_numpy_slot_dtype_shape_and_range() -> None:
    kv, layout = numpy_nhd()
    with pytest.raises(TypeError, match=r"^slot_mapping: expected dtype int64, given int32$"):
        check_transfer(layout, kv, SLOTS.astype(np.int32), "out", chunk(), 0)
    with pytest.raises(
        ValueError, match=r"^slot_mapping: expected shape \[3\] \(one slot per chunk token\), given \(2,\)$"
    ):
        check_transfer(layout, kv, SLOTS[:2], "out", chunk(), 0)
    bad = np.array([0, 20, -1], np.int64)
    with pytest.raises(
        ValueError, match=r"^slot_mapping\[1\]: expected slots in \[-1, 20\) .* given 20 at index 1$"
    ):
        check_transfer(layout, kv, bad, "out", chunk(), 0)
    check_transfer(layout, kv, bad, "out", chunk(), 2)  # skipped tokens' slots are never read


def test_numpy_chunk_type_dtype_shape_and_writability() -> None:
    kv, layout = numpy_nhd()
    with pytest.raises(TypeError, match=r"^out: expected numpy.ndarray or host torch.Tensor, given list$"):
        check_transfer(layout, kv, SLOTS, "out", [[0.0]], 0)
    with pytest.raises(TypeError, match=r"^out: expected dtype float16, given float32$"):
        check_transfer(layout, kv, SLOTS, "out", chunk().astype(np.float32), 0)
    with pytest.raises(ValueError, match=r"^src: expected shape \[2, 2, num_tokens, 24\]"):
        check_transfer(layout, kv, SLOTS, "src", chunk()[:, :1], 0)
    with pytest.raises(ValueError, match=r"^out: expected a contiguous tensor"):
        check_transfer(layout, kv, SLOTS, "out", np.zeros((2, L, 6, H * D), np.float16)[:, :, ::2], 0)
    frozen = chunk()
    frozen.setflags(write=False)
    with pytest.raises(ValueError, match=r"^out: expected a writable array, given a read-only one$"):
        check_transfer(layout, kv, SLOTS, "out", frozen, 0)


def test_mixed_families_in_kv_caches() -> None:
    kv, layout = numpy_nhd()
    mixed = [kv[0], torch.from_numpy(kv[1])]
    with pytest.raises(
        TypeError, match=r"^kv_caches\[1\]: expected numpy.ndarray like kv_caches\[0\], given torch.Tensor$"
    ):
        check_transfer(layout, mixed, SLOTS, "out", chunk(), 0)


def test_numpy_kv_shape_strides_dtype_and_plane_fit() -> None:
    kv, layout = numpy_nhd()
    with pytest.raises(TypeError, match=r"^kv_caches\[0\]: expected dtype float16, given float32$"):
        check_transfer(layout, [kv[0].astype(np.float32), kv[1]], SLOTS, "out", chunk(), 0)
    permuted = np.ascontiguousarray(kv[0].transpose(0, 1, 3, 2, 4)).transpose(0, 1, 3, 2, 4)
    with pytest.raises(ValueError, match=r"^kv_caches\[0\]: expected strides"):
        check_transfer(layout, [permuted, kv[1]], SLOTS, "out", chunk(), 0)
    # planes must lie in each array's buffer from its first element on: a layout whose V plane
    # offset points past the end (as a hand-edited layout could) is refused before any copy
    import dataclasses

    far = dataclasses.replace(layout, plane_offset=(0, 0, kv[0].size, kv[0].size))
    with pytest.raises(ValueError, match=r"plane_offset\[2\]"):
        check_transfer(far, kv, SLOTS, "out", chunk(), 0)
