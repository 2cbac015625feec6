"""Probe of the ``dummy_twin`` test backend: cheap, imports neither torch nor the plugin."""

from __future__ import annotations

import os

from lmcache_core.plugin_api import BackendProbe
from lmcache_dummy_twin import ENABLE_ENV, PRIORITY


def probe() -> BackendProbe:
    enabled = os.environ.get(ENABLE_ENV) == "1"
    return BackendProbe(
        available=enabled,
        reason=(
            f"test-only backend, enabled by {ENABLE_ENV}=1"
            if enabled
            else f"test-only backend, disabled: set {ENABLE_ENV}=1 to enable it"
        ),
        priority=PRIORITY,
        device_types=("cpu",),
        plugin="lmcache_dummy_twin.plugin" if enabled else None,
    )
