"""Token chunking and the chained prefix hash.

A prompt's tokens are cut into chunks of ``chunk_size`` (default 256); the last chunk may be
partial. Chunk ``i``'s hash covers every token before its end:

    h_root = SHA-256(b"lmcache-core/prefix/v1\\0" + salt)
    h_i    = SHA-256(h_{i-1} + tokens_i as little-endian uint32)

so equal hashes mean equal prefixes, on every process and host (no PYTHONHASHSEED, no
platform-dependent encoding), and tenants with different ``cache_salt`` never share a hash.

Why SHA-256: a collision would silently serve another prompt's KV, so the hash must resist
crafted collisions (xxh3 and other non-cryptographic hashes do not). Measured on this project's
CI machine (Xeon with SHA-NI, 256-token chunks, median of 7): SHA-256 1.09 us/chunk,
BLAKE2b 1.77, MD5 1.55, xxh3-128 0.12. SHA-256 is the fastest of the collision-resistant ones
(SHA-NI on x86, SHA2 instructions on Armv8) and costs ~0.5 ms for a 128k-token prompt, far below
moving that prompt's KV.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

DEFAULT_CHUNK_SIZE = 256
_ROOT = b"lmcache-core/prefix/v1\0"
_MAX_TOKEN = 2**32


def as_token_array(tokens: Any) -> np.ndarray:
    """Return ``tokens`` (list of int, 1-D numpy array or 1-D CPU torch tensor) as ``<u4`` numpy.

    Raises TypeError for non-integer input and ValueError for ids outside ``[0, 2**32)``.
    """
    if hasattr(tokens, "detach"):  # torch.Tensor, without importing torch
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.size == 0:
        return np.zeros(0, dtype="<u4")
    if arr.ndim != 1:
        raise ValueError(f"tokens: expected a 1-D sequence of token ids, given shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens: expected integer token ids, given dtype {arr.dtype}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= _MAX_TOKEN:
        bad = lo if lo < 0 else hi
        raise ValueError(f"tokens: expected ids in [0, 2**32), given {bad}")
    return arr.astype("<u4", copy=False)


def salt_root(cache_salt: str | None) -> bytes:
    """The chain's starting hash for ``cache_salt`` (None: the shared, unsalted root)."""
    return hashlib.sha256(_ROOT + (cache_salt or "").encode()).digest()


class TokenChunker:
    """Cuts token sequences into chunks and hashes their prefixes."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, save_partial: bool = True) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size <= 0:
            raise ValueError(f"chunk_size: expected a positive int, given {chunk_size!r}")
        self.chunk_size = chunk_size
        self.save_partial = save_partial

    def bounds(self, num_tokens: int) -> list[tuple[int, int]]:
        """``[(start, end), ...]`` token ranges of the chunks of a ``num_tokens`` prompt.

        The trailing partial chunk is included when ``save_partial`` is set.
        """
        full = num_tokens // self.chunk_size
        out = [(i * self.chunk_size, (i + 1) * self.chunk_size) for i in range(full)]
        if self.save_partial and num_tokens % self.chunk_size:
            out.append((full * self.chunk_size, num_tokens))
        return out

    def prefix_hashes(self, tokens: Any, cache_salt: str | None = None) -> list[tuple[int, int, bytes]]:
        """``[(start, end, hash), ...]`` for every chunk of ``tokens``; hash is 32 bytes."""
        arr = as_token_array(tokens)
        h = salt_root(cache_salt)
        out = []
        for start, end in self.bounds(len(arr)):
            h = hashlib.sha256(h + arr[start:end].tobytes()).digest()
            out.append((start, end, h))
        return out
