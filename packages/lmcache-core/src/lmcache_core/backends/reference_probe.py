"""Probe of the reference backend: always available, lowest priority, every device type.

Imports nothing heavy; registered in lmcache-core's own entry points as ``reference``.
"""

from __future__ import annotations

from lmcache_core.plugin_api import BackendProbe, Priority


def probe() -> BackendProbe:
    """The reference backend runs wherever torch runs."""
    return BackendProbe(
        available=True,
        reason="pure PyTorch, runs on every torch device",
        priority=Priority.REFERENCE,
        device_types=("*",),
        plugin="lmcache_core.backends.reference",
    )
