"""CacheEngine with plane kinds of different widths handed over as a tuple per layer (Ascend MLA
with its indexer): chunks are the sections back to back, stored and loaded byte for byte."""

from __future__ import annotations

from typing import Any

import torch

from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout_registry import LayoutHints, allocate_example, flatten_kv_caches
from lmcache_core.storage.object_format import chunk_meta
from lmcache_core.testing.cases import random_bits_

L, NB, BS = 3, 6, 4


def engine_kv(seed: int | None) -> tuple[list[Any], LayoutHints]:
    kv, hints = allocate_example(
        "vllm_ascend_mla", num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=1, head_size=24,
        dtype=torch.bfloat16, head_size_v=8, variant="dsa",
    )  # fmt: skip
    gen = torch.Generator().manual_seed(seed or 0)
    for t in flatten_kv_caches(kv):
        random_bits_(t, gen) if seed is not None else t.zero_()
    return kv, hints


def test_tuples_per_layer_store_and_retrieve_unequal_sections() -> None:
    tokens = list(range(100, 116))
    src, hints = engine_kv(1)
    dst, _ = engine_kv(None)
    slots_src = torch.tensor([4 * b + t for b in (5, 0, 3, 1) for t in range(BS)])
    slots_dst = torch.tensor([4 * b + t for b in (2, 4, 1, 0) for t in range(BS)])
    with CacheEngine(CacheEngineConfig(chunk_size=8), layout_hints=hints) as eng:
        spec = eng.register_kv_caches(src)
        fmt = spec.groups[0].chunk_format
        assert spec.tag == "L3.nope24bf16.rope8bf16.indexer128bf16"
        assert fmt.nbytes(8) == L * 8 * (24 + 8 + 128) * 2
        assert eng.store(tokens, src, slots_src).tokens == 16
        eng.wait_stores()
        assert eng.retrieve(tokens, dst, slots_dst).tokens == 16
    for layer in range(L):
        for k in range(3):
            want = src[layer][k].view(-1, *src[layer][k].shape[2:])[slots_src]
            got = dst[layer][k].view(-1, *dst[layer][k].shape[2:])[slots_dst]
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (layer, k)


def test_stored_object_of_unequal_sections_is_bytes() -> None:
    kv, hints = engine_kv(2)
    with CacheEngine(CacheEngineConfig(chunk_size=8), layout_hints=hints) as eng:
        spec = eng.register_kv_caches(kv)
    meta = chunk_meta(spec.tag, [g.chunk_format for g in spec.groups], 8)
    assert (meta.dtype, meta.shape) == ("uint8", (spec.chunk_nbytes(8),))
