"""Benchmark shapes and pools: the documented cases, the fill pattern, slot mappings."""

from __future__ import annotations

import pytest
import torch

from lmcache_core.bench.pool import (
    PATTERN_PERIOD,
    SHAPES,
    BlockSampler,
    build_pool,
    fill_pattern_,
    flat_bytes,
    get_shapes,
    quick,
    slot_mapping,
)

MIB = 1 << 20


def test_default_shapes_match_the_documented_cases() -> None:
    nhd, small, hnd, mla, cpu, amx = (
        SHAPES[n] for n in ("nhd", "small_rows", "hnd", "mla", "vllm_cpu_vec", "vllm_cpu_amx")
    )
    assert nhd.chunk_bytes == 32 * MIB and nhd.kind == "vllm_flash_nhd" and nhd.block_size == 16
    assert small.row_bytes == 256 and small.kind == "vllm_flash_nhd"
    assert (
        hnd.kind == "vllm_flash_hnd" and hnd.chunk_bytes == nhd.chunk_bytes
    )  # the same bytes, per-head runs
    assert mla.kind == "mla" and mla.num_kv == 1 and mla.row_bytes == 576 * 2
    assert cpu.kind == "vllm_cpu" and cpu.block_size == 128 and cpu.row_bytes == 8 * 128 * 2
    assert amx.kind == "vllm_cpu_amx" and amx.block_size == 128 and amx.row_bytes == 8 * 128 * 2
    q = quick(nhd)
    assert (q.num_layers, q.num_tokens, q.chunk_bytes) == (4, 64, 2 * 4 * 64 * 8 * 128 * 2)


def test_unknown_shape_names_list_the_valid_ones() -> None:
    assert [s.name for s in get_shapes(["mla", "nhd"])] == ["mla", "nhd"]
    valid = r"\['hnd', 'mla', 'nhd', 'small_rows', 'vllm_cpu_amx', 'vllm_cpu_vec'\]"
    with pytest.raises(ValueError, match=rf"^shapes: expected names from {valid}, given \['huge'\]$"):
        get_shapes(["nhd", "huge"])


def test_pool_pattern_differs_across_blocks_and_layers_and_touches_every_byte() -> None:
    spec = quick(SHAPES["nhd"])
    pool = build_pool(spec, 8, "cpu", seed=1)
    assert pool.num_blocks == 8 and pool.nbytes == 8 * spec.block_bytes
    # same block in two layers, and two blocks in one layer, hold different bytes
    assert not torch.equal(pool.tensors[0][0, 3], pool.tensors[1][0, 3])
    assert not torch.equal(pool.tensors[0][0, 3], pool.tensors[0][0, 4])
    # the pattern continues across tensors with period PATTERN_PERIOD bytes
    t = [torch.zeros(PATTERN_PERIOD + 10, dtype=torch.uint8), torch.zeros(100, dtype=torch.uint8)]
    fill_pattern_(t, seed=3)
    assert torch.equal(t[0][PATTERN_PERIOD:], t[0][:10])
    assert torch.equal(t[1][:90], t[0][10:100])
    with pytest.raises(ValueError, match="num_blocks"):
        build_pool(spec, spec.blocks_per_chunk - 1, "cpu", seed=1)


def test_slot_mappings_use_whole_random_blocks_with_consecutive_slots() -> None:
    m = slot_mapping([5, 2], block_size=4, num_tokens=6)
    assert m.tolist() == [20, 21, 22, 23, 8, 9] and m.dtype == torch.int64
    sampler = BlockSampler(10, seed=0)
    drawn = sampler.take(4) + sampler.take(4)
    assert len(set(drawn)) == 8 and not sampler.reused
    sampler.take(4)  # only 2 fresh blocks were left
    assert sampler.reused
    with pytest.raises(ValueError, match="count"):
        sampler.take(11)


def test_flat_bytes_refuses_non_contiguous() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        flat_bytes(torch.zeros(4, 4).t())
