"""A layout bound to its tensors, as the arguments every native backend's binding takes.

:func:`native_layout` turns a :class:`~lmcache_core.layout.KVLayout` and the engine tensors it
describes into plain integers: each tensor's byte address and the bytes its storage holds from
there, the plane table and the geometry: per plane kind its heads, width, element size, block and
head strides and its split token and channel axes (``kv_index.h`` ``KVKindGeometry``, flattened
to :data:`KIND_FIELDS` integers). The native launchers check these with
``lmcache_core/kv_checks.h`` before a byte moves. The result is cached per layout and tensor set
(same layout object, same tensor objects at the same addresses), so engines, which pass the same
tensors on every call, pay for it once.

It checks only what the integers need to mean what they say (tensors, count, element size); the
user-facing checks (dtype, shapes, slots) are :mod:`lmcache_core.validation`'s, run by
:class:`lmcache_core.backend.Backend`. Which devices are acceptable is the backend's call:
:attr:`NativeLayout.device` is the tensors' one device, or None when they differ.

Imports torch only when called.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.layout import MAX_LEVELS, Axis, KVLayout, PlaneKind

if TYPE_CHECKING:
    import torch

#: Most (layout, tensor set) pairs kept; a process registers a handful.
CACHE_MAX = 64

#: Integers per plane kind in :attr:`NativeLayout.kinds`, in order (``LMC_KV_KIND_FIELDS`` and
#: ``kv_kind_unpack`` in ``kv_index.h``): heads, width, element_size, block_stride, head_stride,
#: token levels, token sizes[MAX_LEVELS], token strides[MAX_LEVELS], channel levels, channel
#: sizes[MAX_LEVELS], channel strides[MAX_LEVELS]; unused levels are size 1, stride 0.
KIND_FIELDS = 5 + 2 * (1 + 2 * MAX_LEVELS)


def _flat_axis(axes: tuple[Axis, ...]) -> tuple[int, ...]:
    pad = MAX_LEVELS - len(axes)
    return (
        len(axes),
        *(a.size for a in axes),
        *(1,) * pad,
        *(a.stride for a in axes),
        *(0,) * pad,
    )


def kind_fields(kind: PlaneKind) -> tuple[int, ...]:
    """``kind`` as the :data:`KIND_FIELDS` integers a binding takes (elements, bytes for element_size)."""
    return (
        kind.heads,
        kind.width,
        kind.element_size,
        kind.block_stride,
        kind.head_stride,
        *_flat_axis(kind.token),
        *_flat_axis(kind.channel),
    )


@dataclass(frozen=True)
class NativeLayout:
    """The binding arguments of one layout bound to ``num_tensors`` engine tensors.

    ``tensor_address``: ``[num_tensors]`` byte address of each tensor's first element
    (``data_ptr()``); ``tensor_nbytes``: ``[num_tensors]`` bytes its storage holds from there;
    ``plane_tensor`` / ``plane_offset``: ``[num_kinds * num_layers]`` tensor index and element
    offset (in the plane kind's elements) of each plane ``p = kind * num_layers + layer``;
    ``dims``: ``(num_kinds, num_layers, num_blocks, block_size)``; ``kinds``: ``[num_kinds]`` tuples
    of :data:`KIND_FIELDS` integers (:func:`kind_fields`). ``device``: the tensors' device, None
    when they are not all on one.
    """

    tensor_address: tuple[int, ...]
    tensor_nbytes: tuple[int, ...]
    plane_tensor: tuple[int, ...]
    plane_offset: tuple[int, ...]
    dims: tuple[int, int, int, int]
    kinds: tuple[tuple[int, ...], ...]
    device: torch.device | None
    devices: tuple[torch.device, ...]


# (id(layout), tensor addresses) -> (weak refs to the layout and tensors, the arguments). A hit
# needs the very same objects: a new tensor at a recycled address, or a new layout at a recycled
# id, is prepared afresh.
_cache: dict[tuple[int, tuple[int, ...]], tuple[tuple[weakref.ref[Any], ...], NativeLayout]] = {}


def native_layout(layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> NativeLayout:
    """The binding arguments of ``layout`` over ``kv_caches`` (cached; see the module docstring).

    TypeError when ``kv_caches`` is not a non-empty list or tuple of tensors, or a tensor's
    element size is not that of a plane kind it holds; ValueError when there are not
    ``layout.num_tensors`` of them.
    """
    import torch

    if not isinstance(kv_caches, (list, tuple)) or not kv_caches:
        raise TypeError(f"kv_caches: expected a non-empty list or tuple of tensors, given {kv_caches!r}")
    try:
        key = (id(layout), tuple(t.data_ptr() for t in kv_caches))
    except AttributeError:
        key = None
    if key is not None:
        hit = _cache.get(key)
        if hit is not None:
            refs, args = hit
            if refs[0]() is layout and all(r() is t for r, t in zip(refs[1:], kv_caches, strict=True)):
                return args
    for i, t in enumerate(kv_caches):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"kv_caches[{i}]: expected torch.Tensor, given {type(t).__name__}")
    if len(kv_caches) != layout.num_tensors:
        raise ValueError(
            f"kv_caches: expected {layout.num_tensors} tensors for layout {layout.kind}, given {len(kv_caches)}"
        )
    kinds = layout.kinds
    plane_kinds = (k for k in kinds for _ in range(layout.num_layers))
    for p, (i, kind) in enumerate(zip(layout.plane_tensor, plane_kinds, strict=False)):
        if not 0 <= i < len(kv_caches):
            continue  # a plane table entry out of range: the native check names it
        t = kv_caches[i]
        if t.element_size() != kind.element_size:
            raise TypeError(
                f"kv_caches[{i}]: expected {kind.element_size}-byte elements ({kind.dtype}, plane kind "
                f"{kind.name}, plane {p}), given {t.dtype}"
            )
    devices = tuple(t.device for t in kv_caches)
    args = NativeLayout(
        tensor_address=tuple(t.data_ptr() for t in kv_caches),
        tensor_nbytes=tuple(
            t.untyped_storage().nbytes() - t.storage_offset() * t.element_size() for t in kv_caches
        ),
        plane_tensor=layout.plane_tensor,
        plane_offset=layout.plane_offset,
        dims=(len(kinds), layout.num_layers, layout.num_blocks, layout.block_size),
        kinds=tuple(kind_fields(k) for k in kinds),
        device=devices[0] if all(d == devices[0] for d in devices) else None,
        devices=devices,
    )
    assert key is not None  # every element is a tensor by now
    if len(_cache) >= CACHE_MAX:
        _cache.clear()
    _cache[key] = ((weakref.ref(layout), *(weakref.ref(t) for t in kv_caches)), args)
    return args
