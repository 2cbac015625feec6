"""Probes of the test backends: cheap, import neither torch nor the kernels.

May assume: nothing but the standard library and ``lmcache_core.plugin_api`` (itself light).
Must not: import torch, or raise for an ordinary "not enabled" answer.
"""

from __future__ import annotations

import os

from lmcache_core.plugin_api import BackendProbe
from lmcache_dummy_backend import (
    BADAPI_ENV,
    BADAPI_PRIORITY,
    ENABLE_ENV,
    NOIMPORT_ENV,
    NOIMPORT_PRIORITY,
    PRIORITY,
)


def _gated(env: str, what: str, priority: int, plugin: str) -> BackendProbe:
    if os.environ.get(env) != "1":
        return BackendProbe(
            available=False,
            reason=f"test-only backend, disabled: set {env}=1 to enable it",
            priority=priority,
            device_types=("cpu",),
        )
    return BackendProbe(
        available=True,
        reason=f"test-only backend, enabled by {env}=1 ({what})",
        priority=priority,
        device_types=("cpu",),
        plugin=plugin,
    )


def probe() -> BackendProbe:
    """The dummy backend: real per-token vllm_flash_nhd kernels on host memory."""
    return _gated(ENABLE_ENV, "per-token vllm_flash_nhd kernels", PRIORITY, "lmcache_dummy_backend.plugin")


def probe_badapi() -> BackendProbe:
    """A backend whose plugin says it was built against an API version the core does not support."""
    return _gated(
        BADAPI_ENV, "reports a wrong API version", BADAPI_PRIORITY, "lmcache_dummy_backend.plugin_badapi"
    )


def probe_noimport() -> BackendProbe:
    """A backend whose plugin module fails to import (a missing native library, simulated)."""
    return _gated(
        NOIMPORT_ENV,
        "its plugin module fails to import",
        NOIMPORT_PRIORITY,
        "lmcache_dummy_backend.plugin_noimport",
    )
