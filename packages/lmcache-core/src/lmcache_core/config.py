"""Configuration of a :class:`~lmcache_core.cache_engine.CacheEngine`.

Every field can come from the environment (``LMCACHE_<FIELD>``, e.g. ``LMCACHE_L1_BYTES``) through
:meth:`CacheEngineConfig.from_env`; explicit arguments win over the environment.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from typing import Any

from lmcache_core.storage.url import split_urls
from lmcache_core.tokens import DEFAULT_CHUNK_SIZE
from lmcache_core.units import parse_bytes, parse_seconds


@dataclass(frozen=True)
class CacheEngineConfig:
    """Settings of one cache engine (one engine process / tensor-parallel rank).

    ``l1_bytes``: host-memory budget in bytes. ``chunk_size``: tokens per chunk.
    ``cache_salt``: default tenant salt (per-call salts override it).
    ``save_partial_chunks``: also store a prompt's trailing partial chunk.
    ``pinned``: ask the backend for page-locked host buffers.

    L2 tiers (:mod:`lmcache_core.storage`): ``l2_urls`` lists them nearest first
    (``LMCACHE_L2_URLS``, comma or space separated), e.g. ``("fs:///mnt/kv?budget=500G",)``.
    ``l2_queue_bytes``: bound of each tier's write-behind queue in bytes (0: a quarter of
    ``l1_bytes``); ``l2_queue_items``: bound in chunks; ``l2_batch``: chunks per adapter call;
    ``l2_workers``: write-behind threads per tier; ``l2_prefetch``: start L2 -> L1 loads on
    lookup; ``l2_flush_seconds``: how long closing the engine waits for queued writes.
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
    l2_urls: tuple[str, ...] = ()
    l2_queue_bytes: int = 0
    l2_queue_items: int = 1024
    l2_batch: int = 8
    l2_workers: int = 2
    l2_prefetch: bool = True
    l2_flush_seconds: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "l2_urls", split_urls(self.l2_urls))
        for url in self.l2_urls:
            if "://" not in url:
                raise ValueError(
                    f"l2_urls: expected URLs like fs:///path or redis://host:port/0, given {url!r}"
                )
        if (
            isinstance(self.l2_queue_bytes, bool)
            or not isinstance(self.l2_queue_bytes, int)
            or self.l2_queue_bytes < 0
        ):
            raise ValueError(
                f"l2_queue_bytes: expected a non-negative int (0: auto), given {self.l2_queue_bytes!r}"
            )
        flush = self.l2_flush_seconds
        if (
            isinstance(flush, bool)
            or not isinstance(flush, (int, float))
            or not math.isfinite(flush)
            or flush < 0
        ):
            raise ValueError(f"l2_flush_seconds: expected a finite, non-negative number, given {flush!r}")
        for name in ("chunk_size", "l1_bytes", "world_size", "l2_queue_items", "l2_batch", "l2_workers"):
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
            elif f.name == "l2_queue_bytes":
                values[f.name] = 0 if raw.strip() == "0" else parse_bytes(var, raw)
            elif f.name in ("chunk_size", "world_size", "rank", "l2_queue_items", "l2_batch", "l2_workers"):
                try:
                    values[f.name] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}: expected an integer, given {raw!r}") from None
            elif f.name == "l2_flush_seconds":
                values[f.name] = parse_seconds(var, raw)
            elif f.name in ("save_partial_chunks", "pinned", "l2_prefetch"):
                if raw.lower() not in ("0", "1", "true", "false", "yes", "no"):
                    raise ValueError(f"{var}: expected one of 0/1/true/false/yes/no, given {raw!r}")
                values[f.name] = raw.lower() in ("1", "true", "yes")
            else:
                values[f.name] = raw
        values.update(overrides)
        return cls(**values)
