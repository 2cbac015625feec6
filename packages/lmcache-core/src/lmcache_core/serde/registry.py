"""Which class implements which codec name: entry points of group ``lmcache_core.serde``.

Each entry point's name is a codec name and its value the class (``zstd =
"lmcache_core.serde.compress:Zstd"``). The core's own codecs are known even when the package's
metadata is stale; an installed entry point of the same name wins. Classes are imported when a
chain names them, so a missing optional library (blosc2, cryptography) only matters to those
who use that codec: for a writer it is an ImportError naming the extra to install, for a reader
of an object that uses it a miss (``missing_codec``).
"""

from __future__ import annotations

import functools

from lmcache_core.entry_point_targets import import_target_module, installed_targets
from lmcache_core.serde.codec import Codec

GROUP = "lmcache_core.serde"

BUILTIN: dict[str, str] = {
    "fp8": "lmcache_core.serde.fp8:Fp8",
    "int8": "lmcache_core.serde.int8:Int8",
    "zstd": "lmcache_core.serde.compress:Zstd",
    "lz4": "lmcache_core.serde.compress:Lz4",
    "aesgcm": "lmcache_core.serde.aesgcm:AesGcm",
}

#: What to install for each built-in codec's library.
EXTRAS = {"zstd": "serde", "lz4": "serde", "aesgcm": "serde"}


@functools.lru_cache(maxsize=1)
def codec_targets() -> dict[str, str]:
    """Codec name -> ``"module:Class"`` of every known codec (read once per process)."""
    return installed_targets(GROUP, BUILTIN)


def codec_class(name: str) -> type[Codec]:
    """The class of codec ``name``. ValueError listing the known names when none is called so;
    ImportError naming what to install when its module cannot be imported."""
    targets = codec_targets()
    target = targets.get(name.lower())
    if target is None:
        raise ValueError(f"serde: unknown codec {name!r}; known: {', '.join(sorted(targets))}")
    module, attr = import_target_module(target, f"serde codec {name!r}", EXTRAS.get(name))
    cls = getattr(module, attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Codec)):
        raise TypeError(f"serde entry point {name!r} ({target}): expected a Codec subclass, given {cls!r}")
    return cls
