"""Kernels of the test-only ``numpy_functional`` backend: numpy KV arrays, functional scatter.

Gather writes the host chunk (a numpy array) in place; scatter never writes the engine's arrays:
it returns copies with the chunk's rows written, as a backend for immutable JAX arrays must.
Written independently of the numpy oracle in :mod:`lmcache_core.testing.numpy_oracle` (a
per-token loop here, vectorised fancy indexing there), so the conformance suite compares two
implementations. Calls are counted in :data:`CALLS`.

Engine arrays: any registry layout whose kinds agree (one token and one channel level), read
through the layout's plane strides; chunk: ``[num_kv, num_layers, num_tokens, hidden]``.

May assume: the core validated every argument (numpy KV, numpy int64 slot mapping, numpy chunk).
Must not: do anything at import time beyond importing numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import API_1_2, Capabilities

#: Number of kernel calls this backend served, by hook.
CALLS: dict[str, int] = {"gather": 0, "scatter": 0}

#: The registry kinds whose planes the flat ``(block, token, head, channel)`` strides describe.
LAYOUTS = frozenset({"vllm_flash_nhd", "vllm_flash_hnd", "flashinfer", "mla", "sglang", "trtllm"})


def _buffer(a: np.ndarray) -> tuple[np.ndarray, int]:
    """The contiguous numpy array owning ``a``'s memory and ``a``'s byte offset inside it."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    if not base.flags.c_contiguous:
        raise ValueError("kv_caches: the numpy functional backend needs arrays over contiguous buffers")
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return base, offset


def _plane(layout: KVLayout, a: np.ndarray, plane: int) -> np.ndarray:
    """Unsigned-int view ``[num_blocks, block_size, num_kv_heads, head_size]`` of one plane."""
    base, offset = _buffer(a)
    size = a.dtype.itemsize
    return np.ndarray(
        shape=(layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_size),
        dtype=np.dtype(f"u{size}"),
        buffer=base,
        offset=offset + layout.plane_offset[plane] * size,
        strides=tuple(s * size for s in layout.strides),
    )


def _copy(a: np.ndarray) -> np.ndarray:
    """A fresh array with ``a``'s shape, strides and dtype, over a copy of its whole buffer."""
    base, offset = _buffer(a)
    return np.ndarray(shape=a.shape, dtype=a.dtype, buffer=base.copy(), offset=offset, strides=a.strides)


def _live(slot_mapping: np.ndarray, skip_prefix: int, block_size: int):
    """Yield ``(token, block, position_in_block)`` for every token that moves."""
    for token in range(skip_prefix, slot_mapping.shape[0]):
        slot = int(slot_mapping[token])
        if slot >= 0:
            yield token, slot // block_size, slot % block_size


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return API_1_2


@hookimpl
def lmcache_capabilities() -> Capabilities:
    return Capabilities(
        layouts=LAYOUTS,
        arrays=frozenset({"numpy"}),
        functional=True,
        status="test-only: numpy, functional scatter, per-token loop",
    )


@hookimpl
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[np.ndarray],
    slot_mapping: np.ndarray,
    out: np.ndarray,
    skip_prefix: int,
    stream: int,
) -> None:
    CALLS["gather"] += 1
    dst = out.view(np.dtype(f"u{out.dtype.itemsize}"))
    planes = [
        _plane(layout, kv_caches[layout.plane_tensor[p]], p) for p in range(layout.num_kv * layout.num_layers)
    ]
    for token, block, pos in _live(slot_mapping, skip_prefix, layout.block_size):
        for p, plane in enumerate(planes):
            kv, layer = divmod(p, layout.num_layers)
            dst[kv, layer, token] = plane[block, pos].reshape(-1)


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[np.ndarray],
    slot_mapping: np.ndarray,
    src: np.ndarray,
    skip_prefix: int,
    stream: int,
) -> list[Any]:
    CALLS["scatter"] += 1
    new = [_copy(a) for a in kv_caches]
    rows = src.view(np.dtype(f"u{src.dtype.itemsize}"))
    planes = [
        _plane(layout, new[layout.plane_tensor[p]], p) for p in range(layout.num_kv * layout.num_layers)
    ]
    shape = (layout.num_kv_heads, layout.head_size)
    for token, block, pos in _live(slot_mapping, skip_prefix, layout.block_size):
        for p, plane in enumerate(planes):
            kv, layer = divmod(p, layout.num_layers)
            plane[block, pos] = rows[kv, layer, token].reshape(shape)
    return new
