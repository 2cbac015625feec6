"""The memcpy roof: the same bytes copied between the same kinds of memory, as fast as plain copies go.

A kernel that gathers a chunk from paged KV reads scattered rows; the roof reads the same number
of bytes as a few long contiguous runs at random places in the same large pool (far larger than
the last-level cache) and writes them to the same chunk buffers. Both therefore read memory, not
cache, and the ratio kernel/roof says how close the kernel comes to the copy bandwidth.

Host memory: libc ``memcpy`` through ctypes (the call releases the GIL), split across
``threads`` threads; 1 thread is a plain ``memcpy``. Device memory: ``dst.copy_(src)`` between
the same memories; the caller synchronizes the device around the timed region.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import random
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Source runs start at multiples of this (bytes): page aligned, as allocator blocks are.
SEGMENT_ALIGN = 4096

#: A copy plan: ``(dst, src)`` pairs of uint8 tensors of equal length.
CopyPlan = list[tuple["torch.Tensor", "torch.Tensor"]]


def _libc_memcpy() -> Callable[[int, int, int], int]:
    if sys.platform == "win32":
        fn = ctypes.cdll.msvcrt.memcpy
    else:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None).memcpy
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    fn.restype = ctypes.c_void_p
    return fn  # type: ignore[no-any-return]


def random_runs(pool: Sequence[torch.Tensor], nbytes: int, rng: random.Random) -> list[torch.Tensor]:
    """uint8 views of contiguous runs at random aligned places of ``pool``, ``nbytes`` in total.

    Each run is at most half of the smallest pool tensor, so runs land anywhere in the pool.
    """
    from lmcache_core.bench.pool import flat_bytes

    flats = [flat_bytes(t) for t in pool]
    max_run = max(SEGMENT_ALIGN, min(f.numel() for f in flats) // 2 // SEGMENT_ALIGN * SEGMENT_ALIGN)
    runs: list[torch.Tensor] = []
    left = nbytes
    while left > 0:
        length = min(left, max_run)
        flat = flats[rng.randrange(len(flats))]
        slots = (flat.numel() - length) // SEGMENT_ALIGN
        if slots < 0:
            raise ValueError(f"pool: a {length}-byte run does not fit a {flat.numel()}-byte tensor")
        start = rng.randrange(slots + 1) * SEGMENT_ALIGN
        runs.append(flat[start : start + length])
        left -= length
    return runs


def plan_gather_like(pool: Sequence[torch.Tensor], chunk: torch.Tensor, rng: random.Random) -> CopyPlan:
    """Pool runs -> ``chunk``'s bytes: the roof of a gather into ``chunk``."""
    from lmcache_core.bench.pool import flat_bytes

    dst = flat_bytes(chunk)
    plan: CopyPlan = []
    offset = 0
    for run in random_runs(pool, dst.numel(), rng):
        plan.append((dst[offset : offset + run.numel()], run))
        offset += run.numel()
    return plan


def plan_scatter_like(pool: Sequence[torch.Tensor], chunk: torch.Tensor, rng: random.Random) -> CopyPlan:
    """``chunk``'s bytes -> pool runs: the roof of a scatter from ``chunk``."""
    return [(src, dst) for dst, src in plan_gather_like(pool, chunk, rng)]


class Memcpy:
    """Executes copy plans: threaded libc memcpy on host memory, ``copy_`` when a device is involved."""

    def __init__(self, threads: int) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected an int >= 1, given {threads!r}")
        self.threads = threads
        self._memcpy = _libc_memcpy()
        self._pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def describe(self, host: bool) -> str:
        if host:
            return f"libc memcpy, {self.threads} thread{'s' if self.threads > 1 else ''}"
        return "tensor.copy_ between the same memories"

    def _host_copy(self, pieces: list[tuple[int, int, int]]) -> None:
        for dst, src, n in pieces:
            self._memcpy(dst, src, n)

    def copy(self, plan: CopyPlan) -> None:
        """Run ``plan``; returns when host copies are done (device copies may still be queued)."""
        if any(d.device.type != "cpu" or s.device.type != "cpu" for d, s in plan):
            for dst, src in plan:
                dst.copy_(src, non_blocking=True)
            return
        pieces = [(d.data_ptr(), s.data_ptr(), d.numel()) for d, s in plan]
        if self._pool is None:
            self._host_copy(pieces)
            return
        # thread k copies the k-th slice of every piece (cache-line aligned)
        shares: list[list[tuple[int, int, int]]] = [[] for _ in range(self.threads)]
        for dst_ptr, src_ptr, n in pieces:
            step = max(64, -(-n // self.threads // 64) * 64)
            for k, start in enumerate(range(0, n, step)):
                shares[k].append((dst_ptr + start, src_ptr + start, min(step, n - start)))
        for future in [self._pool.submit(self._host_copy, share) for share in shares if share]:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
