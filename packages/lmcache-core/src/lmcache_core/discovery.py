"""Finding backend plugins through entry points, without importing them.

Listing the ``lmcache_core.backends`` entry points reads installed metadata only. Each entry
names a cheap probe; running it imports only the probe's module. A probe that raises, or answers
with anything but a :class:`BackendProbe`, is logged with its reason and reported as failed; it
never breaks the core. The heavy plugin module is imported later, and only for the backend chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lmcache_core.plugin_api import BACKENDS_GROUP, BackendProbe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiscoveredBackend:
    """One entry point and what its probe said (``probe`` is None when the probe failed)."""

    name: str
    target: str
    distribution: str | None
    probe: BackendProbe | None
    error: str | None = None

    @property
    def available(self) -> bool:
        return self.probe is not None and self.probe.available

    @property
    def reason(self) -> str:
        if self.probe is None:
            return f"probe failed: {self.error}"
        return self.probe.reason


def _entry_points() -> list[Any]:
    # The standard library's importlib.metadata (3.10+), not the importlib_metadata backport:
    # importing the backport installs a process-wide finder that hides other distributions'
    # metadata from importlib.metadata users in the same process.
    from importlib.metadata import entry_points

    seen: dict[str, Any] = {}
    for ep in entry_points(group=BACKENDS_GROUP):
        if ep.name in seen:
            logger.warning(
                "backend %r is registered twice (%s and %s); using the first",
                ep.name,
                seen[ep.name].value,
                ep.value,
            )
            continue
        seen[ep.name] = ep
    return list(seen.values())


def _run_probe(ep: Any) -> DiscoveredBackend:
    name, target = ep.name, ep.value
    dist = getattr(getattr(ep, "dist", None), "name", None)
    try:
        probe_fn = ep.load()
        result = probe_fn()
        if not isinstance(result, BackendProbe):
            raise TypeError(f"probe returned {type(result).__name__}, expected BackendProbe")
    except Exception as e:  # a broken plugin must never break the core: log it and go on
        error = f"{type(e).__name__}: {e}"
        logger.warning("backend %r skipped: its probe %s failed: %s", name, target, error)
        return DiscoveredBackend(name, target, dist, None, error)
    level = logging.DEBUG if result.available else logging.INFO
    logger.log(level, "backend %r: available=%s (%s)", name, result.available, result.reason)
    return DiscoveredBackend(name, target, dist, result)


def discover_backends() -> list[DiscoveredBackend]:
    """Run every registered backend's probe; sorted by name."""
    return sorted((_run_probe(ep) for ep in _entry_points()), key=lambda d: d.name)
