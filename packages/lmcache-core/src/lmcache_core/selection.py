"""Choosing the backend for the device where the engine's KV lives.

Rules, in order:

1. ``LMCACHE_BACKEND=name`` (or an explicit ``name``) picks that backend. An unknown name is a
   ValueError listing the known ones; a backend that is unavailable or fails to load is a loud
   RuntimeError with its reason and the remedy.
2. Otherwise: among backends whose probe says available and that serve the device type and the
   array family (``BackendProbe.array_types``: torch tensors, numpy arrays, JAX arrays), the
   highest priority wins. Two at the same top priority are an error that names the override.
   A backend that fails to load is logged with its reason and skipped.
3. Nothing served: torch KV fall back to the built-in reference; numpy and JAX KV have no
   fallback (the reference moves torch tensors only): a RuntimeError says which backend to
   install or enable.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from lmcache_core.backend import Backend, import_plugin, reference_backend
from lmcache_core.discovery import DiscoveredBackend, discover_backends
from lmcache_core.plugin_api import BACKEND_ENV

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Selection:
    """The outcome: the backend, every backend found, and why this one."""

    backend: Backend
    found: tuple[DiscoveredBackend, ...]
    why: str


def load_backend(found: DiscoveredBackend) -> Backend:
    """Import and register a discovered backend's plugin module."""
    if found.probe is None or found.probe.plugin is None:
        raise RuntimeError(f"backend {found.name!r} is not available: {found.reason}")
    if found.name == "reference":
        return reference_backend()
    return Backend(found.name, import_plugin(found.probe.plugin), reference=reference_backend())


def _explicit(
    name: str, found: list[DiscoveredBackend], device_type: str, source: str, array_type: str = "torch"
) -> Selection:
    by_name = {d.name: d for d in found}
    if name not in by_name:
        raise ValueError(f"{source}: expected one of {sorted(by_name)}, given {name!r}")
    chosen = by_name[name]
    if not chosen.available:
        raise RuntimeError(
            f"{source}={name!r} asks for backend {name!r}, which is not available here: "
            f"{chosen.reason}. Install or fix the plugin package providing it "
            f"({chosen.distribution or chosen.target}), or unset {BACKEND_ENV}."
        )
    assert chosen.probe is not None
    if not chosen.probe.serves(device_type, array_type):
        raise ValueError(
            f"{source}: backend {name!r} serves device types {list(chosen.probe.device_types)} and "
            f"arrays {list(chosen.probe.array_types)}, the KV are {array_type} arrays on {device_type!r}"
        )
    try:
        backend = load_backend(chosen)
    except Exception as e:
        raise RuntimeError(
            f"{source}={name!r}: backend {name!r} failed to load: {type(e).__name__}: {e}. "
            f"Reinstall a version of {chosen.distribution or chosen.target} that matches this "
            f"lmcache-core, or unset {BACKEND_ENV}."
        ) from e
    return Selection(backend, tuple(found), f"chosen by {source}")


def select_backend(device_type: str = "cpu", name: str | None = None, array_type: str = "torch") -> Selection:
    """Pick the backend for KV on ``device_type`` (a device type such as ``"cuda"``) held in arrays
    of family ``array_type`` (``"torch"``, ``"numpy"``, ``"jax"``: :mod:`lmcache_core.arrays`)."""
    found = discover_backends()
    source = "name"
    if name is None and os.environ.get(BACKEND_ENV):
        name, source = os.environ[BACKEND_ENV], BACKEND_ENV
    if name is not None:
        return _explicit(name, found, device_type, source, array_type)

    candidates = [d for d in found if d.available and d.probe and d.probe.serves(device_type, array_type)]
    by_priority: dict[int, list[DiscoveredBackend]] = {}
    for d in candidates:
        assert d.probe is not None
        by_priority.setdefault(d.probe.priority, []).append(d)
    for priority in sorted(by_priority, reverse=True):
        tied = by_priority[priority]
        if len(tied) > 1:
            names = sorted(d.name for d in tied)
            raise RuntimeError(
                f"backends {names} are all available for {array_type} arrays on device {device_type!r} "
                f"at priority {priority}; choose one with {BACKEND_ENV}=<name>"
            )
        try:
            backend = load_backend(tied[0])
        except Exception as e:  # quiet: the user did not ask for it by name
            logger.warning("backend %r failed to load, skipped: %s: %s", tied[0].name, type(e).__name__, e)
            continue
        what = repr(device_type) if array_type == "torch" else f"{array_type} arrays on {device_type!r}"
        return Selection(backend, tuple(found), f"highest priority ({priority}) for {what}")
    if array_type != "torch":
        available = [f"{d.name} ({', '.join(d.probe.array_types)})" for d in found if d.available and d.probe]
        raise RuntimeError(
            f"kv_caches: no installed backend moves {array_type} arrays on device {device_type!r} "
            f"(available: {available or 'none'}); the built-in reference moves torch tensors only. "
            f"Install or enable a backend whose probe declares array_types including {array_type!r}."
        )
    logger.info("no registered backend loaded for %r; using the built-in reference", device_type)
    return Selection(reference_backend(), tuple(found), "built-in reference (nothing else loaded)")


def get_backend(device_type: str = "cpu", name: str | None = None, array_type: str = "torch") -> Backend:
    """Shortcut for ``select_backend(...).backend``."""
    return select_backend(device_type, name, array_type).backend
