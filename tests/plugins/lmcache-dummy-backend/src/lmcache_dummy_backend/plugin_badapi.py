"""Plugin of the test-only ``dummy_badapi`` backend: reports a backend API version from the future.

Loading it must fail in the core's API check; automatic selection logs it and skips it, an explicit
``LMCACHE_BACKEND=dummy_badapi`` raises with the versions and the remedy.
"""

from __future__ import annotations

from lmcache_core.hookspecs import hookimpl
from lmcache_core.plugin_api import API_VERSION

#: A major version no lmcache-core of this series supports.
BUILT_AGAINST = (API_VERSION[0] + 98, 0)


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return BUILT_AGAINST
