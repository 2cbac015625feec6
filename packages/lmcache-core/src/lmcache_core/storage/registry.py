"""Which adapter serves which URL scheme: entry points of group ``lmcache_core.l2_adapters``.

Each entry point's name is a URL scheme and its value the adapter class
(``fs = "lmcache_core.storage.fs_adapter:FsAdapter"``). Listing reads installed metadata only;
the class is imported when a URL of its scheme is opened, so a missing optional client
library (redis, boto3) only matters to those who use it. The core's own adapters are known
even when the package's metadata is stale (an editable install made before they existed); an
installed entry point of the same name wins.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from lmcache_core.entry_point_targets import import_target_module, installed_targets
from lmcache_core.storage.adapter import L2Adapter
from lmcache_core.storage.url import L2URL

logger = logging.getLogger(__name__)

GROUP = "lmcache_core.l2_adapters"

BUILTIN: dict[str, str] = {
    "fs": "lmcache_core.storage.fs_adapter:FsAdapter",
    "redis": "lmcache_core.storage.redis_adapter:RedisAdapter",
    "rediss": "lmcache_core.storage.redis_adapter:RedisAdapter",
    "redis+cluster": "lmcache_core.storage.redis_adapter:RedisClusterAdapter",
    "s3": "lmcache_core.storage.s3_adapter:S3Adapter",
}

#: What to install for each built-in adapter's client library.
EXTRAS = {"redis": "redis", "rediss": "redis", "redis+cluster": "redis", "s3": "s3"}


def adapter_targets() -> dict[str, str]:
    """URL scheme -> ``"module:Class"`` of every known adapter."""
    return installed_targets(GROUP, BUILTIN)


def adapter_class(scheme: str) -> type[L2Adapter]:
    """The adapter class for ``scheme``; ValueError listing the known schemes if none serves it."""
    targets = adapter_targets()
    target = targets.get(scheme.lower())
    if target is None:
        raise ValueError(f"url: unknown L2 scheme {scheme!r}; known: {', '.join(sorted(targets))}")
    module, attr = import_target_module(target, f"L2 scheme {scheme!r}", EXTRAS.get(scheme))
    cls = getattr(module, attr)
    if not (isinstance(cls, type) and issubclass(cls, L2Adapter)):
        raise TypeError(f"entry point {scheme!r} ({target}): expected an L2Adapter subclass, given {cls!r}")
    return cls


def open_adapter(url: str | L2URL) -> L2Adapter:
    """Open the tier named by ``url`` (``fs:///path``, ``redis://host:port/db``, ...)."""
    parsed = url if isinstance(url, L2URL) else L2URL(url)
    adapter = adapter_class(parsed.scheme)(parsed)
    try:
        parsed.check_unused()
    except ValueError:
        adapter.close()
        raise
    logger.info("L2 tier %s (%s)", adapter.name, type(adapter).__name__)
    return adapter


def open_adapters(urls: Iterable[str]) -> list[L2Adapter]:
    """Open several tiers in order; on any error the ones already open are closed."""
    opened: list[L2Adapter] = []
    try:
        for u in urls:
            opened.append(open_adapter(u))
    except BaseException:
        for a in opened:
            a.close()
        raise
    return opened
