"""The oracle for KV arrays that are not torch tensors: gather and scatter in numpy.

The conformance suite compares backends that move numpy (and, later, JAX) arrays against this,
bit for bit: vectorised fancy indexing over each ``(kv, layer)`` plane, read through the layout's
``(block, token, head, channel)`` strides, on unsigned-int views (NaN payloads and fp8 exact).
It covers layouts whose plane kinds agree (the flat :class:`~lmcache_core.layout.KVLayout`
fields); the oracle never trusts a backend, so it does no routing, only index math.

Also here: :func:`numpy_like`, a numpy copy of a CPU torch tensor with the same storage, offset
and strides (so a case's torch engine tensors become numpy engine arrays with the same layout),
and :func:`numpy_dtype`, the numpy dtype of a torch-style name or None when numpy lacks it
(bfloat16 and fp8 need ``ml_dtypes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from lmcache_core.layout import KVLayout

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def numpy_dtype(name: str) -> np.dtype[Any] | None:
    """numpy's dtype named ``name`` (``"float16"``), or None when this numpy has none."""
    try:
        return np.dtype(name)
    except TypeError:
        return None


def numpy_like(t: torch.Tensor) -> np.ndarray:
    """A numpy array holding a copy of ``t``'s whole storage, viewed with ``t``'s shape, strides
    and offset (a permuted or offset view stays one), in numpy's dtype of ``t``'s name."""
    dtype = numpy_dtype(str(t.dtype).removeprefix("torch."))
    if dtype is None:
        raise TypeError(f"t: numpy has no dtype {t.dtype} here (install ml_dtypes)")
    storage = torch.empty(0, dtype=t.dtype).set_(t.untyped_storage())  # whole storage, 1-D
    buffer = storage.view(_BITS[t.element_size()]).numpy().copy()
    size = t.element_size()
    return np.ndarray(
        shape=tuple(t.shape),
        dtype=dtype,
        buffer=buffer,
        offset=t.storage_offset() * size,
        strides=tuple(s * size for s in t.stride()),
    )


def copy_like(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` with its shape, strides and offset, over a copy of the buffer that owns it
    (``ndarray.copy()`` would make a permuted view contiguous, and the layout would not fit)."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return np.ndarray(shape=a.shape, dtype=a.dtype, buffer=base.copy(), offset=offset, strides=a.strides)


def _plane(layout: KVLayout, a: np.ndarray, plane: int) -> np.ndarray:
    """Unsigned-int view ``[num_blocks, block_size, num_kv_heads, head_size]`` of one plane, over
    the contiguous numpy array that owns ``a``'s memory (as :func:`numpy_like` makes them)."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    size = a.dtype.itemsize
    offset = a.__array_interface__["data"][0] - base.__array_interface__["data"][0]
    return np.ndarray(
        shape=(layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_size),
        dtype=np.dtype(f"u{size}"),
        buffer=base,
        offset=offset + layout.plane_offset[plane] * size,
        strides=tuple(s * size for s in layout.strides),
    )


def _live(layout: KVLayout, slots: np.ndarray, skip_prefix: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tokens, blocks, positions)`` of the chunk tokens that move."""
    tokens = np.arange(skip_prefix, slots.shape[0])
    live = slots[skip_prefix:]
    keep = live >= 0
    tokens, live = tokens[keep], live[keep]
    return tokens, live // layout.block_size, live % layout.block_size


def numpy_gather(
    layout: KVLayout, kv_caches: Sequence[np.ndarray], slots: np.ndarray, out: np.ndarray, skip_prefix: int
) -> None:
    """Write the live tokens' rows of ``out`` ``[num_kv, num_layers, num_tokens, hidden]``."""
    tokens, blocks, positions = _live(layout, slots, skip_prefix)
    dst = out.view(np.dtype(f"u{out.dtype.itemsize}"))
    for p in range(layout.num_kv * layout.num_layers):
        kv, layer = divmod(p, layout.num_layers)
        plane = _plane(layout, kv_caches[layout.plane_tensor[p]], p)
        dst[kv, layer, tokens] = plane[blocks, positions].reshape(len(tokens), layout.hidden)


def numpy_scatter(
    layout: KVLayout, kv_caches: Sequence[np.ndarray], slots: np.ndarray, src: np.ndarray, skip_prefix: int
) -> None:
    """Write the live tokens' rows of ``src`` into ``kv_caches``, in place."""
    tokens, blocks, positions = _live(layout, slots, skip_prefix)
    rows = src.view(np.dtype(f"u{src.dtype.itemsize}"))
    for p in range(layout.num_kv * layout.num_layers):
        kv, layer = divmod(p, layout.num_layers)
        plane = _plane(layout, kv_caches[layout.plane_tensor[p]], p)
        plane[blocks, positions] = rows[kv, layer, tokens].reshape(
            len(tokens), layout.num_kv_heads, layout.head_size
        )
