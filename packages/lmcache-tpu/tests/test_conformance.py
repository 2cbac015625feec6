"""The core's conformance suite for JAX arrays: every layout the tpu backend declares, every
case bit for bit against the numpy oracle (gather into numpy and into host torch chunks, scatter
over the whole KV with the inputs donated, gather -> scatter -> gather)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import pytest

from lmcache_core.backend import Backend
from lmcache_core.selection import get_backend
from lmcache_core.testing.cases import LAYOUT_VARIANTS
from lmcache_core.testing.numpy_conformance import NumpyConformanceSuite
from lmcache_tpu import rows
from lmcache_tpu.testing import to_jax


@pytest.fixture(autouse=True)
def _lazy_buckets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each case is a new layout: compile the buckets it uses, not all 14 (test_compile_count
    covers precompilation)."""
    monkeypatch.setenv("LMCACHE_TPU_PRECOMPILE", "0")


class TestJaxConformance(NumpyConformanceSuite):
    backend_name = "tpu"
    array_type = "jax"
    layout_variants = tuple(v for v in LAYOUT_VARIANTS if v.kind in rows.LAYOUTS)

    def make_backend(self) -> Backend:
        return get_backend(jax.devices()[0].platform, name="tpu", array_type="jax")

    def to_family(self, a: np.ndarray) -> Any:
        return to_jax(a)

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)


def test_every_declared_layout_has_cases() -> None:
    caps = get_backend("cpu", name="tpu", array_type="jax").capabilities
    assert {v.kind for v in TestJaxConformance.layout_variants} == set(caps.layouts)
