"""Stored-chunk codecs: what an L2 tier does to a chunk's bytes on the way to and from storage.

* :mod:`.codec`: the :class:`~.codec.Codec` interface and what a codec is told about a chunk;
* :mod:`.registry`: codec name -> class, through entry points of group ``lmcache_core.serde``;
* :mod:`.chain`: a tier's chain (``fp8,zstd,aesgcm``), parsed, checked, run both ways;
* built-in codecs: :mod:`.fp8` and :mod:`.int8` (lossy, with scales stored in the object),
  :mod:`.compress` (``zstd`` and ``lz4``: byte-plane shuffle then compression, through blosc2),
  :mod:`.aesgcm` (AES-256-GCM, a key per cache salt derived from a master key file).

A tier's chain comes from its URL (``fs:///mnt/kv?serde=fp8,zstd,aesgcm:key_file=/etc/kv.key``).
The object header records the chain and each codec's parameters
(:class:`lmcache_core.storage.object_format.Serde`), so any reader knows how to decode; one
that lacks a codec or the key gets a miss with the reason. Codecs run on the tiers' write-behind
and load threads; L1 holds plaintext. Importing this package imports no codec.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lmcache_core.serde.chain import Chain, parse_chain

__all__ = ["Chain", "parse_chain"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lmcache_core.serde import chain

        return getattr(chain, name)
    raise AttributeError(f"module 'lmcache_core.serde' has no attribute {name!r}")
