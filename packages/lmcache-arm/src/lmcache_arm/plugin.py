"""Hook implementations of the ``arm`` backend (see :mod:`lmcache_core.hookspecs`).

May assume: the probe found the extension; torch imports; the kernel hooks are reached only through
:class:`lmcache_core.backend.Backend`, which validated every argument (native code checks extents
and slots for memory safety before writing). Must not at import time: allocate, start threads or
touch any device.

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
from lmcache_core.plugin_api import API_1_0, Capabilities, supported_dtypes

#: Backend hook API version this plugin was written against: 1.0 (host copies need no ordering hooks).
BUILT_AGAINST_API: tuple[int, int] = API_1_0


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
) -> None:
    kernels.gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream=stream)


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> None:
    kernels.scatter(layout, kv_caches, slot_mapping, src, skip_prefix, stream=stream)


@hookimpl
def lmcache_alloc_host(nbytes: int, pinned: bool) -> torch.Tensor:
    # No device to DMA from: pinning would only cost locked pages, so ``pinned`` is ignored.
    return torch.empty(nbytes, dtype=torch.uint8)
