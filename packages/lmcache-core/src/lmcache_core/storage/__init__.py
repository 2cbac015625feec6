"""L2 storage tiers: chunks that outlive host RAM and are shared between engines and hosts.

* :mod:`.adapter`: the batched, thread-safe, non-blocking adapter interface and its results;
* :mod:`.registry`: URL scheme -> adapter, through entry points ``lmcache_core.l2_adapters``;
* :mod:`.object_format`: header + checksummed payload, the bytes every tier stores;
* :mod:`.fs_adapter`, :mod:`.redis_adapter`, :mod:`.s3_adapter`: the built-in tiers;
* :mod:`.tiers`: write-behind from L1, lookup across tiers, prefetch into L1;
* :mod:`.metrics`: per-tier counters and histograms, exported with prometheus-client.

Importing this package imports none of them; use ``open_adapter(url)`` (lazy) or the modules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmcache_core.storage.registry import open_adapter, open_adapters

__all__ = ["open_adapter", "open_adapters"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lmcache_core.storage import registry

        return getattr(registry, name)
    raise AttributeError(f"module 'lmcache_core.storage' has no attribute {name!r}")
