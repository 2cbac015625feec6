"""The numpy functional test backend (tests/plugins/lmcache-numpy-functional), end to end.

It declares numpy arrays and ``Capabilities.functional`` (hook API 1.2): its scatter returns new
KV arrays. These tests prove the conformance suite's numpy parts pass on it (numpy is the oracle),
that selection routes numpy KV to it and torch KV not, and that ``CacheEngine`` stores numpy KV
and hands the updated arrays back from ``retrieve``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_core.backend import Backend, import_plugin, reference_backend
from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout_registry import LayoutHints, allocate_example
from lmcache_core.selection import select_backend
from lmcache_core.testing.numpy_conformance import NumpyConformanceSuite
from lmcache_core.testing.numpy_oracle import numpy_like

pytest_plugins = ["lmcache_core.testing"]

ENABLE = "LMCACHE_TEST_NUMPY_FUNCTIONAL"


def numpy_backend() -> Backend:
    return Backend(
        "numpy_functional", import_plugin("lmcache_numpy_functional.plugin"), reference=reference_backend()
    )


class TestNumpyFunctionalConformance(NumpyConformanceSuite):
    def make_backend(self) -> Backend:
        return numpy_backend()


# ---- selection -------------------------------------------------------------------------------


def test_numpy_arrays_select_the_backend_declaring_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENABLE, "1")
    chosen = select_backend("cpu", array_type="numpy")
    assert chosen.backend.name == "numpy_functional"
    assert "numpy arrays" in chosen.why
    assert chosen.backend.functional
    assert select_backend("cpu").backend.name != "numpy_functional"  # torch KV: never this one


def test_numpy_arrays_without_a_backend_say_what_to_install() -> None:
    with pytest.raises(RuntimeError) as e:
        select_backend("cpu", array_type="numpy")
    msg = str(e.value)
    assert "no installed backend moves numpy arrays on device 'cpu'" in msg
    assert "array_types including 'numpy'" in msg


def test_naming_a_torch_backend_for_numpy_arrays_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"arrays \['torch'\], the KV are numpy arrays on 'cpu'"):
        select_backend("cpu", name="reference", array_type="numpy")


def test_torch_kv_on_the_numpy_backend_go_to_the_reference() -> None:
    backend = numpy_backend()
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=1,
        num_blocks=2,
        block_size=2,
        num_kv_heads=1,
        head_size=4,
        dtype=torch.float32,
    )
    from lmcache_core.layout_registry import detect_layout

    layout = detect_layout(kv, hints)
    assert backend.kernel_name(layout, "torch") == "reference"
    assert backend.kernel_name(layout, "numpy") == "numpy_functional"


# ---- CacheEngine -----------------------------------------------------------------------------


def _numpy_kv(seed: int, fill: float | None = None) -> list[np.ndarray]:
    kv, _ = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=6,
        block_size=4,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float16,
    )
    gen = torch.Generator().manual_seed(seed)
    for t in kv:
        t.copy_(torch.randn(t.shape, generator=gen) if fill is None else torch.full(t.shape, fill))
    return [numpy_like(t) for t in kv]


def test_cache_engine_stores_numpy_kv_and_retrieve_returns_the_new_arrays(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENABLE, "1")
    tokens = list(range(100, 116))  # 16 tokens: two chunks of 8
    slots = np.arange(16, dtype=np.int64) + 4  # blocks 1..4
    kv = _numpy_kv(seed=1)
    config = CacheEngineConfig(chunk_size=8, l1_bytes=1 << 20)
    hints = LayoutHints(kind="vllm_flash_nhd")
    with CacheEngine(config, layout_hints=hints) as engine:
        stored = engine.store(tokens, kv, slots)
        engine.wait_stores()
        assert engine.backend.name == "numpy_functional"
        assert stored.tokens == 16 and stored.kv_caches is None
        fresh = _numpy_kv(seed=2, fill=0.0)
        before = [a.copy() for a in fresh]
        result = engine.retrieve(tokens, fresh, slots)
    assert result.tokens == 16 and result.chunks == 2
    assert isinstance(result.kv_caches, list) and len(result.kv_caches) == 2
    for new, old, src in zip(result.kv_caches, fresh, kv, strict=True):
        assert new is not old
        # the loaded slots (blocks 1..4 of both K and V) hold the stored KV bit for bit
        assert new.view(np.uint16)[:, 1:5].tobytes() == src.view(np.uint16)[:, 1:5].tobytes()
        # the rest is the fresh arrays' content
        assert new.view(np.uint16)[:, [0, 5]].tobytes() == old.view(np.uint16)[:, [0, 5]].tobytes()
    for old, b in zip(fresh, before, strict=True):  # functional: the arrays passed in are untouched
        assert old.tobytes() == b.tobytes()


def test_cache_engine_rejects_torch_slot_mapping_for_numpy_kv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENABLE, "1")
    kv = _numpy_kv(seed=3)
    config = CacheEngineConfig(chunk_size=8, l1_bytes=1 << 20)
    with CacheEngine(config, layout_hints=LayoutHints(kind="vllm_flash_nhd")) as engine:
        with pytest.raises(
            TypeError, match=r"slot_mapping: expected numpy.ndarray \(the KV are numpy arrays\)"
        ):
            engine.store(list(range(8)), kv, torch.arange(8, dtype=torch.int64))
