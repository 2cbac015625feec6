"""The memcpy roof moves exactly the planned bytes, from page-aligned runs of the pool."""

from __future__ import annotations

import random

import pytest
import torch

from lmcache_core.bench.memcpy_roof import SEGMENT_ALIGN, Memcpy, plan_gather_like, plan_scatter_like


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_memcpy_roof_moves_the_right_bytes(threads: int) -> None:
    gen = torch.Generator().manual_seed(0)
    pool = [torch.randint(0, 256, (1 << 20,), dtype=torch.uint8, generator=gen) for _ in range(3)]
    chunk = torch.zeros(300_001, dtype=torch.uint8)
    rng = random.Random(0)
    plan = plan_gather_like(pool, chunk, rng)
    assert sum(d.numel() for d, _ in plan) == chunk.numel()
    for _, src in plan:
        base = next(p for p in pool if p.untyped_storage().data_ptr() == src.untyped_storage().data_ptr())
        assert (src.data_ptr() - base.data_ptr()) % SEGMENT_ALIGN == 0
    memcpy = Memcpy(threads)
    try:
        memcpy.copy(plan)
        assert torch.equal(chunk, torch.cat([src for _, src in plan]))
        chunk.copy_(torch.randint(0, 256, chunk.shape, dtype=torch.uint8, generator=gen))
        back = plan_scatter_like(pool, chunk, rng)
        memcpy.copy(back)
        assert torch.equal(torch.cat([dst for _, dst in back]), chunk)
    finally:
        memcpy.close()
    with pytest.raises(ValueError, match="threads"):
        Memcpy(0)
