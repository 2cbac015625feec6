"""Plugin classes named by entry points: ``name -> "module:Class"`` targets, imported on use.

One home for what the L2 adapter registry (:mod:`lmcache_core.storage.registry`) and the codec
registry (:mod:`lmcache_core.serde.registry`) share: the built-in targets overlaid by installed
entry points of the same (lower-cased) name, and the import of a target's module with an
ImportError that names the optional extra to install. Reads installed metadata only.
"""

from __future__ import annotations

import importlib
from types import ModuleType


def installed_targets(group: str, builtin: dict[str, str]) -> dict[str, str]:
    """``builtin`` overlaid by the entry points of ``group``: name -> ``"module:Class"``."""
    from importlib.metadata import entry_points

    targets = dict(builtin)
    for ep in entry_points(group=group):
        targets[ep.name.lower()] = ep.value
    return targets


def import_target_module(target: str, what: str, extra: str | None) -> tuple[ModuleType, str]:
    """The module of ``target`` (``"module:Class"``) and the class's attribute name.

    ImportError ``"<what> needs <module>, which is not installed; install it with pip install
    'lmcache-core[<extra>]'"`` (the hint only when ``extra`` is given) when the import fails.
    """
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        hint = f"; install it with pip install 'lmcache-core[{extra}]'" if extra else ""
        raise ImportError(f"{what} needs {e.name or module_name}, which is not installed{hint}") from e
    return module, attr
