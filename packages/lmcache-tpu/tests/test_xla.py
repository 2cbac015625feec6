"""The XLA path on the layouts tpu-inference allocates: bf16, fp8 and fp32 with head_dim 64 and
128 (and the MLA latent), sharded KV on a 4-device mesh, and bounded compilations."""

from __future__ import annotations

from typing import Any

import jax
import jax.monitoring
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lmcache_core.selection import get_backend
from lmcache_core.testing.numpy_oracle import copy_like, numpy_gather, numpy_scatter
from lmcache_tpu import buckets, xla
from lmcache_tpu.testing import bits, to_jax, tpu_kv


@pytest.fixture(scope="module")
def backend() -> Any:
    return get_backend("cpu", name="tpu", array_type="jax")


def _chunk(layout: Any, n: int, dtype: Any, fill: int = 0xA5) -> np.ndarray:
    out = np.empty(layout.chunk_format.shape(n), dtype=dtype)
    out.view(np.uint8).fill(fill)
    return out


def _round_trip(
    backend: Any, arrays: list[np.ndarray], layout: Any, slots: np.ndarray, sharding: Any = None
) -> None:
    """gather == oracle; scatter of a random chunk into other KV == oracle, same sharding."""
    kv = [to_jax(a, sharding) for a in arrays]
    n = len(slots)
    got = _chunk(layout, n, arrays[0].dtype)
    backend.gather(layout, kv, slots, got, 0)
    expected = _chunk(layout, n, arrays[0].dtype)
    numpy_gather(layout, arrays, slots, expected, 0)
    assert np.array_equal(bits(got), bits(expected))

    rng = np.random.default_rng(n)
    src = _chunk(layout, n, arrays[0].dtype)
    src.view(np.uint8)[...] = rng.integers(0, 256, src.nbytes, dtype=np.uint8).reshape(
        src.view(np.uint8).shape
    )
    target = [copy_like(a) for a in arrays]
    numpy_scatter(layout, target, slots, src, 0)
    new = backend.scatter(layout, kv, slots, src, 0)
    for a, e, old_sharding in zip(new, target, [k.sharding for k in kv], strict=True):
        assert np.array_equal(bits(a), bits(e))
        assert a.sharding == old_sharding


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float32"])
@pytest.mark.parametrize("head_size", [64, 128])
def test_tpu_inference_layouts(backend: Any, dtype: str, head_size: int) -> None:
    arrays, layout = tpu_kv(
        "tpu_inference",
        layers=2,
        blocks=6,
        block_size=8,
        heads=2,
        head_size=head_size,
        dtype=dtype,
        seed=head_size,
    )
    assert dict(layout.extra)["kernel"] == ("hd64" if head_size == 64 else "rpa_v3")
    slots = np.array([40, 41, 42, 43, 44, 45, 46, 47, 8, 9, 10, 3], dtype=np.int64)  # runs, partial blocks
    _round_trip(backend, arrays, layout, slots)


@pytest.mark.parametrize("variant", [None, "transposed"])
def test_tpu_inference_mla_latent(backend: Any, variant: str | None) -> None:
    arrays, layout = tpu_kv(
        "tpu_inference_mla", layers=2, blocks=4, block_size=8, heads=1, head_size=576, dtype="bfloat16",
        seed=3, variant=variant,
    )  # fmt: skip
    _round_trip(backend, arrays, layout, np.array([0, 1, 2, 17, 30, 31], dtype=np.int64))


@pytest.mark.parametrize(
    "mesh_shape, spec",
    [((4,), P(None, None, "model")), ((2, 2), P("data", None, "model")), ((4,), P("data"))],
    ids=["heads", "pages+heads", "pages"],
)
def test_sharded_kv_gathers_the_full_chunk_and_keeps_its_sharding(
    backend: Any, mesh_shape: Any, spec: Any
) -> None:
    names = (
        ("model",)
        if spec == P(None, None, "model")
        else ("data",)
        if len(mesh_shape) == 1
        else ("data", "model")
    )
    mesh = Mesh(np.array(jax.devices()[:4]).reshape(mesh_shape), names)
    # 8 KV heads in bf16: 16 combined heads = 8 groups of 2, 2 (or 4) per device, no per-shard padding
    arrays, layout = tpu_kv(
        "tpu_inference", layers=2, blocks=8, block_size=4, heads=8, head_size=128, dtype="bfloat16", seed=11
    )
    slots = np.array([5, 6, 7, 28, 29, 30, 31, 0, 13], dtype=np.int64)
    _round_trip(backend, arrays, layout, slots, NamedSharding(mesh, spec))


def test_compilations_are_bounded_over_mixed_request_sizes(
    backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMCACHE_TPU_PRECOMPILE", "1")
    compiles: list[str] = []

    def listen(event: str, duration: float, **kwargs: Any) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    arrays, layout = tpu_kv(
        "tpu_inference", layers=1, blocks=300, block_size=2, heads=1, head_size=128, dtype="float32", seed=5
    )
    kv = [to_jax(a) for a in arrays]
    jax.block_until_ready(kv)
    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        made = xla.plan_for(layout, kv)  # registration: every bucket, both directions
        assert len(compiles) == 2 * len(buckets.BUCKETS) and made.precompile() == 0
        rng = np.random.default_rng(0)
        for n in (1, 2, 3, 5, 9, 17, 64, 128, 129, 300, 600, 7):  # 600 rows = 300 blocks: split
            slots = rng.permutation(layout.num_slots)[:n].astype(np.int64)
            out = _chunk(layout, n, arrays[0].dtype)
            backend.gather(layout, kv, slots, out, 0)
            kv = backend.scatter(layout, kv, slots, out, 0)
        assert len(compiles) == 2 * len(buckets.BUCKETS), "a request size compiled a new executable"
    finally:
        jax.monitoring.clear_event_listeners()


def test_buckets_split_large_transfers() -> None:
    assert [p.bucket for p in buckets.pieces(1, 16)] == [1]
    assert [p.bucket for p in buckets.pieces(17, 16)] == [2]
    assert [(p.rows, p.bucket) for p in buckets.pieces(64 * 16 + 3, 16)] == [(1024, 64), (3, 1)]
    with pytest.raises(ValueError, match="blocks: expected 1 <= blocks <= 64, given 65"):
        buckets.bucket_for(65)


def test_a_hand_edited_layout_is_refused(backend: Any) -> None:
    import dataclasses

    arrays, layout = tpu_kv(
        "tpu_inference", layers=1, blocks=2, block_size=2, heads=2, head_size=128, dtype="float32", seed=1
    )
    wrong = dataclasses.replace(layout, extra=(("packing", "1"), ("kernel", "hd64")))
    with pytest.raises(ValueError, match="layout: expected the layout detected from kv_caches"):
        xla.plan_for(wrong, [to_jax(a) for a in arrays])
