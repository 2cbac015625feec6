"""lmcache-core: a hardware-neutral KV-cache layer for LLM inference engines.

Importing this package is cheap: it imports neither torch nor any backend plugin. Heavy names
are resolved on first use through a module-level ``__getattr__``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute); resolved lazily
_LAZY = {
    "CacheEngine": ("lmcache_core.cache_engine", "CacheEngine"),
    "CacheResult": ("lmcache_core.cache_engine", "CacheResult"),
    "CacheEngineConfig": ("lmcache_core.config", "CacheEngineConfig"),
    "KVLayout": ("lmcache_core.layout", "KVLayout"),
    "KVCacheSpec": ("lmcache_core.layout", "KVCacheSpec"),
    "ChunkFormat": ("lmcache_core.layout", "ChunkFormat"),
    "LayoutHints": ("lmcache_core.layout_registry", "LayoutHints"),
    "detect_layout": ("lmcache_core.layout_registry", "detect_layout"),
    "Backend": ("lmcache_core.backend", "Backend"),
    "BackendProbe": ("lmcache_core.plugin_api", "BackendProbe"),
    "Capabilities": ("lmcache_core.plugin_api", "Capabilities"),
    "Priority": ("lmcache_core.plugin_api", "Priority"),
    "API_VERSION": ("lmcache_core.plugin_api", "API_VERSION"),
    "hookimpl": ("lmcache_core.hookspecs", "hookimpl"),
    "get_backend": ("lmcache_core.selection", "get_backend"),
    "select_backend": ("lmcache_core.selection", "select_backend"),
}

__all__ = sorted([*_LAZY, "__version__", "current_backend"])

if TYPE_CHECKING:
    from lmcache_core.backend import Backend


def _default_device_type() -> str:
    import torch

    accel = getattr(torch, "accelerator", None)
    if accel is not None and accel.is_available():
        current = accel.current_accelerator()
        if current is not None:
            return str(current.type)
    return "cpu"


def __getattr__(name: str) -> Any:
    if name == "current_backend":  # resolved once, on first use
        from lmcache_core.selection import get_backend

        backend: Backend = get_backend(_default_device_type())
        globals()["current_backend"] = backend
        return backend
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lmcache_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
