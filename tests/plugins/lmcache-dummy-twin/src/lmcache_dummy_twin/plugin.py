"""Plugin of the ``dummy_twin`` test backend: identity hooks only, so every kernel call is routed
to the reference backend. Imports nothing at import time beyond the core's hook marker.
"""

from __future__ import annotations

from lmcache_core.hookspecs import hookimpl
from lmcache_core.plugin_api import API_VERSION, Capabilities


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return API_VERSION


@hookimpl
def lmcache_capabilities() -> Capabilities:
    return Capabilities(layouts=frozenset(), dtypes=frozenset(), status="test-only: no kernels of its own")
