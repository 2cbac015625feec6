"""lmcache-core for vLLM v1: the KV connector ``LMCacheCoreConnector``.

Select it with ``kv_transfer_config={"kv_connector": "LMCacheCoreConnector", "kv_role": "kv_both",
"kv_connector_module_path": "lmcache_core.integrations.vllm"}``; settings come from
``kv_connector_extra_config`` and ``LMCACHE_*`` variables (:mod:`.settings`, docs/vllm.md).

=================  ==========================================================================
module             one job
=================  ==========================================================================
``connector``      the ``KVConnectorBase_V1`` subclass, its metadata, stats and Prometheus
                   classes (imports vLLM)
``scheduler``      how many tokens come from the cache; per-step plans of loads and stores
``worker``         one CacheEngine per rank: layout detection, loads, stores, load failures
``policy``         load or recompute: costs measured online, the prefix that wins
``lookup``         scheduler -> worker lookups, in process or over a Unix socket
``plan``           the per-step plan the scheduler sends the workers
``settings``       ``kv_connector_extra_config`` and ``LMCACHE_*``
``stats``          counters, their aggregation and export
``runner``         one vLLM engine per process running scripted steps (bench e2e, demo, tests)
=================  ==========================================================================

Importing this package imports neither vLLM nor torch; ``LMCacheCoreConnector`` (and the other
connector classes) are resolved on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

_LAZY = ("LMCacheCoreConnector", "LMCacheCoreMetadata", "LMCacheCoreStats", "LMCacheCorePromMetrics")

__all__ = list(_LAZY)

if TYPE_CHECKING:
    from lmcache_core.integrations.vllm.connector import LMCacheCoreConnector as LMCacheCoreConnector
    from lmcache_core.integrations.vllm.connector import LMCacheCoreMetadata as LMCacheCoreMetadata
    from lmcache_core.integrations.vllm.connector import LMCacheCorePromMetrics as LMCacheCorePromMetrics
    from lmcache_core.integrations.vllm.connector import LMCacheCoreStats as LMCacheCoreStats


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from lmcache_core.integrations.vllm import connector

        value = getattr(connector, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmcache_core.integrations.vllm' has no attribute {name!r}")
