"""The oracle for KV arrays that are not torch tensors: gather and scatter in numpy.

The conformance suite compares backends that move numpy (and, later, JAX) arrays against this,
bit for bit: vectorised fancy indexing over each ``(kv, layer)`` plane, read through the layout's
``(block, token, head, channel)`` strides, on unsigned-int views (NaN payloads and fp8 exact).
Every plane kind is read through its own geometry (:class:`~lmcache_core.layout.PlaneKind`):
one numpy axis per level of its split token and channel axes, so transposed, pair-packed and
tiled K/V, padded channels (TPU) and K/V of unequal widths (chunk sections as uint8 bytes) are
covered; the oracle never trusts a backend, so it does no routing, only index math.

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

from lmcache_core.layout import KVLayout, PlaneKind

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def numpy_dtype(name: str) -> np.dtype[Any] | None:
    """numpy's dtype named ``name`` (``"float16"``), or None when this numpy has none."""
    try:
        return np.dtype(name)
    except TypeError:
        pass
    try:  # bfloat16 and the fp8 formats (JAX depends on ml_dtypes, so it is there with JAX)
        import ml_dtypes
    except ImportError:
        return None
    found = getattr(ml_dtypes, name, None)
    return np.dtype(found) if found is not None else None


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


def _owner(a: np.ndarray) -> tuple[np.ndarray, int]:
    """The numpy array owning ``a``'s memory and ``a``'s byte offset inside it."""
    base = a
    while isinstance(base.base, np.ndarray):
        base = base.base
    return base, a.__array_interface__["data"][0] - base.__array_interface__["data"][0]


def _plane(layout: KVLayout, a: np.ndarray, plane: int) -> np.ndarray:
    """Unsigned-int view of one plane with one axis per level, outermost first:
    ``[num_blocks, token levels..., heads, channel levels...]`` (a one-level kind:
    ``[num_blocks, block_size, heads, width]``), over the numpy array that owns ``a``'s memory
    (as :func:`numpy_like` makes them). Padded channels are outside the view."""
    kind = layout.plane_kind(plane)
    base, offset = _owner(a)
    size = kind.element_size
    token, channel = kind.token[::-1], kind.channel[::-1]
    return np.ndarray(
        shape=(layout.num_blocks, *(x.size for x in token), kind.heads, *(x.size for x in channel)),
        dtype=np.dtype(f"u{size}"),
        buffer=base,
        offset=offset + layout.plane_offset[plane] * size,
        strides=tuple(
            s * size
            for s in (
                kind.block_stride,
                *(x.stride for x in token),
                kind.head_stride,
                *(x.stride for x in channel),
            )
        ),
    )


def _digits(kind: PlaneKind, positions: np.ndarray) -> tuple[np.ndarray, ...]:
    """In-block token ``positions`` as the token axis' digits, outermost level first."""
    digits = []
    for level in kind.token:
        positions, digit = np.divmod(positions, level.size)
        digits.append(digit)
    return tuple(reversed(digits))


def chunk_sections(layout: KVLayout, chunk: np.ndarray) -> tuple[int, list[np.ndarray]]:
    """``(num_tokens, per-kind unsigned-int views [num_layers, num_tokens, hidden_k])`` of a
    chunk: the typed 4-D ``[num_kv, num_layers, num_tokens, hidden]`` or uint8 bytes."""
    fmt = layout.chunk_format
    if chunk.ndim == 4:
        return chunk.shape[2], [
            chunk[k].view(np.dtype(f"u{chunk.dtype.itemsize}")) for k in range(chunk.shape[0])
        ]
    raw = chunk.view(np.uint8)
    n = raw.shape[0] // fmt.token_nbytes
    views = []
    for s, at in zip(fmt.sections, fmt.section_offsets(n), strict=True):
        part = raw[at : at + fmt.num_layers * n * s.hidden * s.element_size]
        views.append(part.view(np.dtype(f"u{s.element_size}")).reshape(fmt.num_layers, n, s.hidden))
    return n, views


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
    """Write the live tokens' rows of ``out`` (``[num_kv, num_layers, num_tokens, hidden]``, or
    uint8 bytes of the chunk format's sections), every plane kind through its own geometry."""
    tokens, blocks, positions = _live(layout, slots, skip_prefix)
    _, sections = chunk_sections(layout, out)
    for p in range(layout.num_planes):
        index, layer = divmod(p, layout.num_layers)
        kind = layout.kinds[index]
        plane = _plane(layout, kv_caches[layout.plane_tensor[p]], p)
        rows = plane[(blocks, *_digits(kind, positions))]
        sections[index][layer, tokens] = rows.reshape(len(tokens), kind.hidden)


def numpy_scatter(
    layout: KVLayout, kv_caches: Sequence[np.ndarray], slots: np.ndarray, src: np.ndarray, skip_prefix: int
) -> None:
    """Write the live tokens' rows of ``src`` into ``kv_caches``, in place (padding untouched)."""
    tokens, blocks, positions = _live(layout, slots, skip_prefix)
    _, sections = chunk_sections(layout, src)
    for p in range(layout.num_planes):
        index, layer = divmod(p, layout.num_layers)
        kind = layout.kinds[index]
        plane = _plane(layout, kv_caches[layout.plane_tensor[p]], p)
        shape = (len(tokens), kind.heads, *(x.size for x in kind.channel[::-1]))
        plane[(blocks, *_digits(kind, positions))] = sections[index][layer, tokens].reshape(shape)
