"""Configuration of a :class:`~lmcache_core.cache_engine.CacheEngine`.

Every field can come from the environment (``LMCACHE_<FIELD>``, e.g. ``LMCACHE_L1_BYTES``) through
:meth:`CacheEngineConfig.from_env`; explicit arguments win over the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Any

from lmcache_core.tokens import DEFAULT_CHUNK_SIZE

_SIZE_SUFFIX = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(name: str, text: str) -> int:
    """``"512M"``, ``"4G"``, ``"1048576"`` -> bytes; ValueError naming ``name`` otherwise."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = _SIZE_SUFFIX.get(t[-1:], 1)
    digits = t[:-1] if t[-1:] in _SIZE_SUFFIX else t
    try:
        value = int(float(digits) * mult)
    except ValueError:
        raise ValueError(f"{name}: expected a byte size like 4G or 512M, given {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name}: expected a positive byte size, given {text!r}")
    return value


@dataclass(frozen=True)
class CacheEngineConfig:
    """Settings of one cache engine (one engine process / tensor-parallel rank).

    ``l1_bytes``: host-memory budget in bytes. ``chunk_size``: tokens per chunk.
    ``cache_salt``: default tenant salt (per-call salts override it).
    ``save_partial_chunks``: also store a prompt's trailing partial chunk.
    ``pinned``: ask the backend for page-locked host buffers.
    """

    model_id: str = "model"
    chunk_size: int = DEFAULT_CHUNK_SIZE
    l1_bytes: int = 4 * 2**30
    world_size: int = 1
    rank: int = 0
    cache_salt: str | None = None
    save_partial_chunks: bool = True
    pinned: bool = True
    backend: str | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_size", "l1_bytes", "world_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, given {v!r}")
        if (
            isinstance(self.rank, bool)
            or not isinstance(self.rank, int)
            or not 0 <= self.rank < self.world_size
        ):
            raise ValueError(f"rank: expected an int in [0, {self.world_size}), given {self.rank!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> CacheEngineConfig:
        """Build from ``LMCACHE_*`` variables, then ``overrides``."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"LMCACHE_{f.name.upper()}")
            if raw is None:
                continue
            var = f"LMCACHE_{f.name.upper()}"
            if f.name == "l1_bytes":
                values[f.name] = parse_bytes(var, raw)
            elif f.name in ("chunk_size", "world_size", "rank"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}: expected an integer, given {raw!r}") from None
            elif f.name in ("save_partial_chunks", "pinned"):
                if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
                    raise ValueError(f"{var}: expected one of 0/1/true/false/yes/no, given {raw!r}")
                values[f.name] = raw.lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)
