"""Probe of the numpy functional test backend: cheap, imports neither numpy nor the kernels.

May assume: nothing but the standard library and ``lmcache_core.plugin_api``.
Must not: import numpy, or raise for an ordinary "not enabled" answer.
"""

from __future__ import annotations

import os

from lmcache_core.plugin_api import BackendProbe
from lmcache_numpy_functional import ENABLE_ENV, PRIORITY


def probe() -> BackendProbe:
    """Available when ``LMCACHE_TEST_NUMPY_FUNCTIONAL=1``: numpy KV arrays on the host."""
    if os.environ.get(ENABLE_ENV) != "1":
        return BackendProbe(
            available=False,
            reason=f"test-only backend, disabled: set {ENABLE_ENV}=1 to enable it",
            priority=PRIORITY,
            device_types=("cpu",),
            array_types=("numpy",),
        )
    return BackendProbe(
        available=True,
        reason=f"test-only backend, enabled by {ENABLE_ENV}=1 (functional numpy kernels)",
        priority=PRIORITY,
        device_types=("cpu",),
        plugin="lmcache_numpy_functional.plugin",
        array_types=("numpy",),
    )
