"""Hook implementations of the ``arm`` backend (see :mod:`lmcache_core.hookspecs`).

May assume: the probe found the extension; torch imports; the core validated every argument of a
kernel hook (:class:`lmcache_core.backend.Backend` does), though native code checks slots and sizes
again before writing. Must not at import time: allocate, start threads or touch any device.

Stream and event hooks are not implemented: host copies finish before the kernel hook returns, so
the core's fallback (the reference backend's: stream 0, no-op events) is exact.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_arm import _C, kernels
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import Capabilities

#: Backend hook API version this plugin was written against.
BUILT_AGAINST_API: tuple[int, int] = (1, 0)

#: Dtypes the kernels move: every element size 1, 2, 4 or 8 bytes (copies are bitwise).
_DTYPE_NAMES = (
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "int8",
    "uint8",  # 1 byte
    "float16",
    "bfloat16",
    "int16",
    "uint16",  # 2 bytes
    "float32",
    "int32",
    "uint32",  # 4 bytes
    "float64",
    "int64",
    "uint64",  # 8 bytes
)


def supported_dtypes() -> frozenset[str]:
    """Names (``"bfloat16"``) of the dtypes above that this torch build has."""
    return frozenset(n for n in _DTYPE_NAMES if isinstance(getattr(torch, n, None), torch.dtype))


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return BUILT_AGAINST_API


@hookimpl
def lmcache_capabilities() -> Capabilities:
    isa = kernels.isa()
    return Capabilities(
        layouts=frozenset(LAYOUT_KINDS),
        dtypes=supported_dtypes(),
        pinned_host=False,
        status=(
            f"compiled, {isa}, {_C.max_threads()} OpenMP threads; host memory only, so "
            "lmcache_alloc_host returns plain pageable memory (page-locking needs a device)"
        ),
        extra={"isa": isa, "openmp_threads": str(_C.max_threads())},
    )


@hookimpl
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool:
    kernels.gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream=stream, validate=False)
    return True


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool:
    kernels.scatter(layout, kv_caches, slot_mapping, src, skip_prefix, stream=stream, validate=False)
    return True


@hookimpl
def lmcache_alloc_host(nbytes: int, pinned: bool) -> torch.Tensor:
    # No device to DMA from: pinning would only cost locked pages, so ``pinned`` is ignored.
    return torch.empty(nbytes, dtype=torch.uint8)
