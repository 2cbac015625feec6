"""The Pallas DMA kernel (pltpu.make_async_copy over the block table) in Pallas' interpreter on
tiny shapes (about 1-2 MB/s here), bit for bit against the numpy oracle; behind a setting."""

from __future__ import annotations

import numpy as np
import pytest

from lmcache_core.selection import get_backend
from lmcache_core.testing.numpy_oracle import copy_like, numpy_gather, numpy_scatter
from lmcache_tpu import plugin, xla
from lmcache_tpu.testing import bits, to_jax, tpu_kv


@pytest.fixture(autouse=True)
def _pallas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TPU_KERNEL", "pallas")
    monkeypatch.setenv("LMCACHE_TPU_PRECOMPILE", "0")


@pytest.mark.parametrize("dtype, head_size", [("bfloat16", 128), ("float8_e4m3fn", 64), ("float32", 128)])
def test_pallas_gather_and_scatter_match_the_oracle(dtype: str, head_size: int) -> None:
    backend = get_backend("cpu", name="tpu", array_type="jax")
    arrays, layout = tpu_kv(
        "tpu_inference", layers=2, blocks=3, block_size=4, heads=2, head_size=head_size, dtype=dtype, seed=7
    )
    kv = [to_jax(a) for a in arrays]
    assert xla.plan_for(layout, kv).kernel == "pallas (interpret)"
    slots = np.array([4, 5, 6, 7, 1, -1, 10], dtype=np.int64)
    shape = layout.chunk_format.shape(len(slots))
    got = np.full(shape, 0, dtype=arrays[0].dtype)
    backend.gather(layout, kv, slots, got, 1)
    expected = np.full(shape, 0, dtype=arrays[0].dtype)
    numpy_gather(layout, arrays, slots, expected, 1)
    assert np.array_equal(bits(got), bits(expected))

    src = got.copy()
    src.view(np.uint8)[...] = np.random.default_rng(1).integers(
        0, 256, src.view(np.uint8).shape, dtype=np.uint8
    )
    target = [copy_like(a) for a in arrays]
    numpy_scatter(layout, target, slots, src, 0)
    new = backend.scatter(layout, kv, slots, src, 0)
    for a, e in zip(new, target, strict=True):
        assert np.array_equal(bits(a), bits(e))


def test_info_says_the_pallas_kernel_is_on_and_interpreted() -> None:
    text, extra = plugin.status()
    assert "Pallas DMA kernel on (interpreted: no TPU)" in text and extra["kernel"] == "pallas"
