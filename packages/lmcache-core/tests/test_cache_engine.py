import pytest
import torch

from lmcache_core import CacheEngine, CacheEngineConfig
from lmcache_core.backend import reference_backend
from lmcache_core.layout import ChunkFormat
from lmcache_core.layout_registry import allocate_example

SHAPE = {"num_layers": 3, "num_blocks": 32, "num_kv_heads": 2, "head_size": 8}


def kv_pool(kind="vllm_flash_nhd", block_size=8, dtype=torch.float16, fill=True, **over):
    shape = {**SHAPE, **over}
    kv, hints = allocate_example(kind, block_size=block_size, dtype=dtype, **shape)
    for t in kv:
        if fill:
            t.copy_(torch.randn(t.shape))
        else:
            t.zero_()
    return kv, hints


def slots_for(num_tokens, block_size, num_blocks, seed=0):
    """Random distinct blocks, consecutive slots inside each: how engines allocate."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randperm(num_blocks, generator=g)[: (num_tokens + block_size - 1) // block_size]
    slots = (blocks[:, None] * block_size + torch.arange(block_size)).flatten()
    return slots[:num_tokens].to(torch.int64)


def gather_all(layout, kv, slots):
    out = torch.zeros(layout.chunk_format.shape(len(slots)), dtype=kv[0].dtype)
    reference_backend().gather(layout, kv, slots, out)
    return out


@pytest.mark.parametrize("kind", ["vllm_flash_nhd", "vllm_cpu", "flashinfer", "trtllm"])
def test_store_lookup_retrieve_round_trip(kind):
    src, hints = kv_pool(kind)
    dst, _ = kv_pool(kind, fill=False)
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=1 << 22), layout_hints=hints)
    tokens = list(range(1000, 1050))
    s_src, s_dst = slots_for(50, 8, 32, seed=1), slots_for(50, 8, 32, seed=2)
    assert eng.store(tokens, src, s_src).tokens == 50
    assert eng.lookup(tokens).tokens == 50
    assert eng.retrieve(tokens, dst, s_dst).tokens == 50
    layout = eng.spec.groups[0]
    assert torch.equal(
        gather_all(layout, src, s_src).view(torch.int16), gather_all(layout, dst, s_dst).view(torch.int16)
    )


def test_lookup_is_chunk_granular_prefix():
    src, hints = kv_pool()
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=hints)
    tokens = list(range(48))
    eng.store(tokens, src, slots_for(48, 8, 32))
    assert eng.lookup(tokens).tokens == 48
    assert eng.lookup(tokens + [7, 7, 7]).tokens == 48  # new tail: the cached prefix still hits
    assert eng.lookup(tokens[:40]).tokens == 32  # partial tail of other length misses
    assert eng.lookup([9] + tokens[1:]).tokens == 0  # first token differs: nothing shared
    assert eng.lookup(tokens[:16] + [5] * 32).tokens == 16
    assert eng.stats.lookups == 5 and eng.stats.lookup_hit_tokens == 48 + 48 + 32 + 0 + 16


def test_store_is_idempotent_and_stops_at_missing_kv():
    src, hints = kv_pool()
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=hints)
    tokens = list(range(64))
    slots = slots_for(64, 8, 32)
    slots[40] = -1  # the engine has no KV for token 40 (chunk 2)
    assert eng.store(tokens, src, slots).tokens == 32
    assert eng.lookup(tokens).tokens == 32
    assert eng.store(tokens, src, slots).tokens == 0 and eng.stats.store_skipped_present == 2


def test_store_skips_leading_tokens_whose_slots_are_unknown():
    """A caller holding only a prompt's last pages stores them under the whole prefix's keys."""
    src, hints = kv_pool()
    dst, _ = kv_pool(fill=False)
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=1 << 22), layout_hints=hints)
    tokens = list(range(48))
    slots = slots_for(48, 8, 32, seed=3)
    slots[:16] = -1
    assert eng.store(tokens, src, slots).tokens == 0  # stops at the chunk with -1 slots
    assert eng.store(tokens, src, slots, skip_leading_tokens=16).tokens == 32
    assert eng.lookup(tokens).tokens == 0  # the first chunk is not cached
    assert eng.retrieve(tokens, dst, slots, skip_leading_tokens=16).tokens == 32
    layout = eng.spec.groups[0]
    assert torch.equal(gather_all(layout, src, slots[16:]), gather_all(layout, dst, slots[16:]))
    with pytest.raises(ValueError, match="skip_leading_tokens: expected a non-negative int, given -1"):
        eng.store(tokens, src, slots, skip_leading_tokens=-1)


def test_retrieve_skips_leading_tokens_and_stops_at_miss():
    src, hints = kv_pool()
    dst, _ = kv_pool(fill=False)
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=hints)
    tokens = list(range(64))
    s_src, s_dst = slots_for(64, 8, 32, 3), slots_for(64, 8, 32, 4)
    eng.store(tokens[:40], src, s_src[:40])  # chunks 0, 1 and a partial 32..40
    loaded = eng.retrieve(tokens, dst, s_dst, skip_leading_tokens=20)
    assert loaded.tokens == 32 - 20  # chunk 1 from token 20; chunk 2 (32..48) is not cached
    assert loaded.chunks == 1 and loaded.nbytes == eng.spec.chunk_nbytes(16)  # the whole chunk moved
    layout = eng.spec.groups[0]
    a, b = gather_all(layout, src, s_src[:40]), gather_all(layout, dst, s_dst[:40])
    assert torch.equal(a[:, :, 20:32].view(torch.int16), b[:, :, 20:32].view(torch.int16))
    assert bool((b[:, :, :20] == 0).all())  # skipped tokens untouched


def test_eviction_under_budget():
    src, hints = kv_pool()
    chunk_bytes = 2 * 3 * 16 * 16 * 2  # [2, layers, 16 tokens, hidden 16] fp16
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=3 * chunk_bytes), layout_hints=hints)
    first, second = list(range(64)), list(range(100, 164))
    eng.store(first, src, slots_for(64, 8, 32))
    eng.store(second, src, slots_for(64, 8, 32))
    st = eng.l1_stats()
    assert st.used_bytes <= 3 * chunk_bytes and st.evictions >= 5
    assert eng.lookup(first).tokens == 0  # the oldest chunks went first
    assert eng.lookup(second).tokens == 0  # its chunk 0 was evicted by its own later chunks...
    assert eng.stats.stored_chunks == 8


def test_tenants_and_ranks_are_isolated():
    src, hints = kv_pool()
    tokens = list(range(32))
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, cache_salt="acme"), layout_hints=hints)
    eng.store(tokens, src, slots_for(32, 8, 32))
    assert eng.lookup(tokens).tokens == 32
    assert eng.lookup(tokens, cache_salt="globex").tokens == 0
    assert eng.lookup(tokens, cache_salt="acme").tokens == 32


def test_scheduler_side_lookup_uses_declared_formats():
    src, hints = kv_pool()
    fmt = ChunkFormat.uniform(2, 3, 16, "float16", 2)
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=hints, chunk_formats=[fmt])
    assert eng.lookup(list(range(32))).tokens == 0  # works before any KV is registered
    eng.store(list(range(32)), src, slots_for(32, 8, 32))
    assert eng.lookup(list(range(32))).tokens == 32
    wrong = CacheEngine(
        CacheEngineConfig(chunk_size=16),
        layout_hints=hints,
        chunk_formats=[ChunkFormat.uniform(2, 3, 16, "bfloat16", 2)],
    )
    with pytest.raises(ValueError, match="chunk format"):
        wrong.store(list(range(32)), src, slots_for(32, 8, 32))


def test_two_layer_groups_with_different_block_sizes():
    g0, h0 = kv_pool("vllm_flash_nhd", block_size=8)
    g1, h1 = kv_pool("mla", block_size=4, num_kv_heads=1, head_size=12, num_blocks=64)
    d0, _ = kv_pool("vllm_flash_nhd", block_size=8, fill=False)
    d1, _ = kv_pool("mla", block_size=4, num_kv_heads=1, head_size=12, num_blocks=64, fill=False)
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=[h0, h1])
    tokens = list(range(40))
    s0, s1 = slots_for(40, 8, 32, 5), slots_for(40, 4, 64, 6)
    t0, t1 = slots_for(40, 8, 32, 7), slots_for(40, 4, 64, 8)
    assert eng.store(tokens, [g0, g1], [s0, s1]).tokens == 40
    assert "+" in eng.spec.tag
    assert eng.retrieve(tokens, [d0, d1], [t0, t1]).tokens == 40
    for layout, a, sa, b, sb in ((eng.spec.groups[0], g0, s0, d0, t0), (eng.spec.groups[1], g1, s1, d1, t1)):
        assert torch.equal(
            gather_all(layout, a, sa).view(torch.int16), gather_all(layout, b, sb).view(torch.int16)
        )


def test_bad_arguments():
    src, hints = kv_pool()
    eng = CacheEngine(CacheEngineConfig(chunk_size=16), layout_hints=hints)
    with pytest.raises(ValueError, match=r"slot_mapping\[0\].*32"):
        eng.store(list(range(32)), src, slots_for(31, 8, 32))
    with pytest.raises(ValueError, match="skip_leading_tokens"):
        eng.retrieve(list(range(32)), src, slots_for(32, 8, 32), skip_leading_tokens=-1)
    with pytest.raises(TypeError, match="kv_caches"):
        eng.store(list(range(32)), "not tensors", slots_for(32, 8, 32))
    with pytest.raises(ValueError, match=r"slot_mapping: expected one int64 tensor per layer group \(1\)"):
        eng.store(list(range(32)), src, [slots_for(32, 8, 32)] * 2)
    with pytest.raises(ValueError, match="kv_caches: expected chunk format"):
        eng.store(list(range(32)), [src, src], [slots_for(32, 8, 32)] * 2)


def test_a_retrieved_chunk_becomes_most_recently_used_in_l1():
    """retrieve reads through L1's pin(): a hit outlives chunks stored after it but not read since."""
    src, hints = kv_pool()
    nbytes = 2 * SHAPE["num_layers"] * 16 * SHAPE["num_kv_heads"] * SHAPE["head_size"] * 2  # one fp16 chunk
    eng = CacheEngine(CacheEngineConfig(chunk_size=16, l1_bytes=3 * nbytes), layout_hints=hints)
    prompts = {
        name: list(range(base, base + 16)) for name, base in zip("abcd", (100, 200, 300, 400), strict=True)
    }
    for name in "abc":
        assert eng.store(prompts[name], src, slots_for(16, 8, 32)).tokens == 16
    dst, _ = kv_pool(fill=False)
    assert eng.retrieve(prompts["a"], dst, slots_for(16, 8, 32, seed=3)).tokens == 16  # a hit on the oldest
    assert eng.store(prompts["d"], src, slots_for(16, 8, 32)).tokens == 16  # L1 is full: one chunk goes
    assert [eng.lookup(prompts[n]).tokens for n in "abcd"] == [16, 0, 16, 16]
