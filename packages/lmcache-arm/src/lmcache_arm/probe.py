"""Probe of the ``arm`` backend: is the compiled extension installed, and which ISA path does it use.

May assume: nothing beyond the standard library and :mod:`lmcache_core.plugin_api`.
Must not, at import time or when called: import torch, load the extension, or raise for an
ordinary "not here" answer. It only looks the extension module up (``importlib.util.find_spec``).
"""

from __future__ import annotations

import importlib.util
import platform

from lmcache_core.plugin_api import BackendProbe, Priority

#: Dotted path of the hook implementations, imported only when this backend is chosen.
PLUGIN = "lmcache_arm.plugin"
EXTENSION = "lmcache_arm._C"


def isa_path(machine: str | None = None) -> str:
    """How the NEON kernels run on ``machine`` (default: this host), e.g. ``"NEON via SIMDe on x86_64"``."""
    machine = (machine or platform.machine()).lower()
    if machine in ("aarch64", "arm64"):
        return "NEON native"
    return f"NEON via SIMDe on {machine}"


def probe() -> BackendProbe:
    """Available when ``lmcache_arm._C`` can be found; serves KV in host memory (``"cpu"``)."""
    if importlib.util.find_spec(EXTENSION) is None:
        return BackendProbe(
            available=False,
            reason=(
                f"compiled extension {EXTENSION} is not installed; rebuild it with "
                "`pip install --no-build-isolation --no-deps -e packages/lmcache-arm`"
            ),
            priority=Priority.NATIVE_HOST,
            device_types=("cpu",),
            plugin=None,
        )
    return BackendProbe(
        available=True,
        reason=f"native host-memory kernels, {isa_path()}",
        priority=Priority.NATIVE_HOST,
        device_types=("cpu",),
        plugin=PLUGIN,
    )
