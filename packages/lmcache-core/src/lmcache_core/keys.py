"""Cache keys: what identifies a stored chunk across processes, hosts and tenants.

A key carries the model id, the chunk format of every layer group (``KVCacheSpec.tag``: layers
and, per plane kind, hidden size and dtype; ``kv2.L32.h1024.bfloat16`` when K and V are alike,
``L61.nope512bf16.rope64bf16`` when kinds differ: :attr:`lmcache_core.layout.ChunkFormat.tag`),
the tensor-parallel world size and rank, a tag of the ``cache_salt`` (a hash, so the salt itself
never reaches shared storage) and the chained prefix hash from :mod:`lmcache_core.tokens`. The
paging layout (NHD, HND, FlashInfer, vLLM CPU's transposed or packed K, TPU's padded lanes, ...)
is not part of the key: every layout gathers true token rows of real channels, so the chunk's
bytes do not depend on it and engines with different attention backends share entries.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

_SEP = "|"


def salt_tag(cache_salt: str | None) -> str:
    """Short public tag of a salt: ``"-"`` when unsalted, else 16 hex digits of its SHA-256."""
    if not cache_salt:
        return "-"
    return hashlib.sha256(b"lmcache-core/salt\0" + cache_salt.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class KeyScope:
    """Everything in a key except the prefix hash; fixed for one engine (and one tenant)."""

    model_id: str
    spec_tag: str
    world_size: int = 1
    rank: int = 0
    salt: str = "-"

    def __post_init__(self) -> None:
        if not self.model_id or _SEP in self.model_id:
            raise ValueError(
                f"model_id: expected a non-empty string without {_SEP!r}, given {self.model_id!r}"
            )
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size ({self.world_size}), given {self.rank}")

    def key(self, prefix_hash: bytes) -> CacheKey:
        return CacheKey(self, prefix_hash)


@dataclass(frozen=True)
class CacheKey:
    """One chunk's key; ``str(key)`` is its stable text form used by every tier."""

    scope: KeyScope
    prefix_hash: bytes

    def __str__(self) -> str:
        s = self.scope
        return _SEP.join(
            (s.model_id, s.spec_tag, f"tp{s.world_size}.{s.rank}", s.salt, self.prefix_hash.hex())
        )
