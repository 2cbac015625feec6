"""Load-or-recompute: the cost model's estimates and the prefix choice."""

from __future__ import annotations

import pytest

from lmcache_core.integrations.vllm.policy import (
    ChunkSource,
    CostEstimates,
    CostModel,
    choose_load_prefix,
    chunk_sources,
)


def est(prefill_tok_s: float, l1_gbps: float, l2_gbps: float, overhead: float = 0.0) -> CostEstimates:
    return CostEstimates(1 / prefill_tok_s, 0.0, l1_gbps * 1e9, l2_gbps * 1e9, overhead, prefill_samples=1)


def test_chunk_sources_split_tiers_and_skip_what_the_engine_holds() -> None:
    chunks = chunk_sources(hit_end=300, l1_end=128, chunk_size=64, computed=32, bytes_per_token=10.0)
    assert [(c.end, c.tokens, c.tier) for c in chunks] == [
        (64, 32, "L1"),
        (128, 64, "L1"),
        (192, 64, "L2"),
        (256, 64, "L2"),
        (300, 44, "L2"),
    ]
    assert [c.nbytes for c in chunks] == [640, 640, 640, 640, 440]
    assert chunk_sources(0, 0, 64, 0, 10.0) == []


def test_fast_tiers_load_everything() -> None:
    chunks = chunk_sources(1024, 512, 256, 0, 32 * 1024)  # 32 KiB per token
    d = choose_load_prefix(chunks, est(prefill_tok_s=200, l1_gbps=5, l2_gbps=1))
    assert (d.load_end, d.l1_tokens, d.l2_tokens, d.declined_tokens) == (1024, 512, 512, 0)
    assert d.est_load_s < d.est_recompute_s
    assert d.reason.startswith("load all 1024 hit tokens")


def test_slow_l2_loses_to_recompute_and_only_the_l1_prefix_is_loaded() -> None:
    # SGLang's file tier as users saw it: 2,450 ms to load against 1,725 ms to recompute.
    tokens, per_token = 4096, 32 * 1024
    l2_gbps = tokens * per_token / 2.450 / 1e9
    chunks = chunk_sources(tokens, 1024, 256, 0, per_token)
    d = choose_load_prefix(chunks, est(prefill_tok_s=tokens / 1.725, l1_gbps=5, l2_gbps=l2_gbps))
    assert d.load_end == 1024
    assert (d.l1_tokens, d.l2_tokens, d.declined_tokens) == (1024, 0, 3072)
    assert "recompute the last 3072" in d.reason


def test_everything_in_a_slow_tier_is_recomputed() -> None:
    # KVBM's disk tier as users saw it: 40 s to load against 0.9 s to recompute.
    chunks = chunk_sources(4096, 0, 256, 0, 32 * 1024)
    d = choose_load_prefix(
        chunks, est(prefill_tok_s=4096 / 0.9, l1_gbps=5, l2_gbps=4096 * 32 * 1024 / 40 / 1e9)
    )
    assert not d.loads
    assert d.declined_tokens == 4096
    assert d.reason.startswith("recompute all 4096 hit tokens")
    forced = choose_load_prefix(chunks, est(4096 / 0.9, 5, 0.0034), policy="always")
    assert forced.load_end == 4096 and forced.reason.startswith("policy always")


def test_per_chunk_overhead_can_make_a_tiny_tail_not_worth_loading() -> None:
    chunks = [ChunkSource(256, 256, 256 * 100, "L1"), ChunkSource(260, 4, 400, "L1")]
    d = choose_load_prefix(chunks, est(prefill_tok_s=1e6, l1_gbps=10, l2_gbps=1, overhead=1e-4))
    assert d.load_end == 256  # 4 tokens recompute in 4 us, loading them costs 100 us


def test_bad_policy_and_tier_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"policy: expected one of \['always', 'cost'\], given 'fast'"):
        choose_load_prefix([], est(1, 1, 1), policy="fast")
    with pytest.raises(ValueError, match="tier: expected one of"):
        est(1, 1, 1).bandwidth("L3")
    assert not choose_load_prefix([], est(1, 1, 1)).loads


def test_cost_model_learns_from_measurements() -> None:
    m = CostModel(prefill_tokens_per_s=1000, l1_gbps=1, l2_gbps=0.1, chunk_overhead_s=0.0, alpha=0.5)
    e = m.estimates()
    assert (e.prefill_s_per_token, e.l1_bytes_per_s, e.l2_bytes_per_s) == (1e-3, 1e9, 1e8)
    m.observe_step(1, 0.002)  # a decode step: fixed overhead
    m.observe_step(1000, 0.102)  # 100 us per token after the overhead
    e = m.estimates()
    assert e.step_overhead_s == pytest.approx(0.002)
    assert e.prefill_s_per_token == pytest.approx(1e-4)  # first measurement replaces the prior
    m.observe_step(1000, 0.202)
    assert m.estimates().prefill_s_per_token == pytest.approx(1.5e-4)  # EMA with alpha 0.5
    m.observe_load(l1_bytes=4_000_000_000, l2_bytes=0, chunks=10, seconds=1.0)
    assert m.estimates().l1_bytes_per_s == pytest.approx(4e9)
    # 1 GB from L1 at 4 GB/s takes 0.25 s of the 1.25 s; the rest is L2's: 1 GB/s.
    m.observe_load(l1_bytes=1_000_000_000, l2_bytes=1_000_000_000, chunks=10, seconds=1.25)
    assert m.estimates().l2_bytes_per_s == pytest.approx(1e9)
    assert m.estimates().l2_samples == 1
    m.observe_step(0, 1.0)
    m.observe_load(0, 0, 0, 1.0)
    assert m.estimates().prefill_samples == 2


def test_estimates_round_trip_and_bad_priors() -> None:
    e = CostModel().estimates()
    assert CostEstimates.from_dict(e.to_dict()) == e
    with pytest.raises(ValueError, match="l2_gbps: expected a positive number, given 0"):
        CostModel(l2_gbps=0)
    with pytest.raises(ValueError, match="alpha"):
        CostModel(alpha=2)


def test_a_mostly_held_first_chunk_does_not_stop_the_load_of_the_chunks_after_it() -> None:
    # vLLM holds 250 of the first chunk's 256 tokens: loading that chunk adds 6 tokens for a whole
    # chunk's bytes (2.15 ms against 0.30 ms), not worth it alone; the whole 774-token prefix is.
    per_token = (2.15e-3 - 5e-5) * 4e9 / 256  # a chunk loads in 2.15 ms from L1 at 4 GB/s
    chunks = chunk_sources(hit_end=1024, l1_end=1024, chunk_size=256, computed=250, bytes_per_token=per_token)
    assert [c.tokens for c in chunks] == [6, 256, 256, 256]
    e = CostEstimates(1 / 20_000, 0.0, 4e9, 0.5e9, 5e-5, prefill_samples=1)
    assert e.load_seconds("L1", chunks[0].nbytes) > e.recompute_seconds(chunks[0].tokens)
    d = choose_load_prefix(chunks, e, computed=250)
    assert (d.load_end, d.l1_tokens, d.declined_tokens) == (1024, 774, 0)
    assert round(d.est_load_s * 1e3, 1) == 8.6 and round(d.est_recompute_s * 1e3, 1) == 38.7
    assert d.reason.startswith("load all 774 hit tokens: est load 8.60 ms < recompute 38.70 ms")


def test_until_a_prefill_is_measured_every_hit_is_loaded() -> None:
    chunks = chunk_sources(4096, 0, 256, 0, 32 * 1024)
    slow = CostEstimates(1 / 1e6, 0.0, 5e9, 1e6, 0.0)  # priors say recompute; nothing measured
    d = choose_load_prefix(chunks, slow)
    assert (d.load_end, d.l2_tokens, d.declined_tokens) == (4096, 4096, 0)
    assert d.reason.startswith("prefill speed not measured yet: load all 4096 hit tokens")
    measured = CostEstimates(1 / 1e6, 0.0, 5e9, 1e6, 0.0, prefill_samples=1)
    assert not choose_load_prefix(chunks, measured).loads


def test_gpu_figures_timed_on_the_device_keep_loading_hits() -> None:
    # An H100-class prefill of 2048 tokens: the host enqueues it in 0.4 ms, the device runs it in
    # 40 ms. 1024 cached tokens of 128 KiB each sit in L1, loaded at 20 GB/s.
    per_token, tokens = 128 * 1024, 1024
    chunks = chunk_sources(tokens, tokens, 256, 0, per_token)
    device = CostModel(l1_gbps=20.0)
    device.observe_step(2048, 0.040)  # what the worker's synchronized sample measures
    d = choose_load_prefix(chunks, device.estimates())
    assert d.load_end == tokens and d.est_load_s < d.est_recompute_s
    enqueue = CostModel(l1_gbps=20.0)
    enqueue.observe_step(2048, 0.0004)  # host enqueue time: recompute would look 100x cheaper
    assert not choose_load_prefix(chunks, enqueue.estimates()).loads
