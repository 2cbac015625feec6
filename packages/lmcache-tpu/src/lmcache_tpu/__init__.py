"""lmcache-tpu: lmcache-core's backend for KV caches held in JAX arrays (TPU, and JAX's CPU backend).

Importing this package imports nothing heavy: the probe (:mod:`lmcache_tpu.probe`) finds JAX and a
TPU without importing JAX; the kernels (:mod:`lmcache_tpu.xla`, :mod:`lmcache_tpu.pallas_kernels`)
and the hook module (:mod:`lmcache_tpu.plugin`) import JAX when the core selects this backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmcache_core.layout import KVLayout


def precompile(layout: KVLayout, kv_caches: Any) -> int:
    """Compile every block-count bucket of the gather and scatter for ``layout`` held in
    ``kv_caches`` (the flat list of JAX arrays, with their sharding); returns the number of
    executables compiled now (0 when they already were). Call it when the KV is registered."""
    from lmcache_tpu import xla

    return xla.plan_for(layout, kv_caches).precompile()
