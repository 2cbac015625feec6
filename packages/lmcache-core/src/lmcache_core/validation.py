"""Argument checks that run before any backend kernel touches memory.

Every failure raises ValueError or TypeError naming the argument, what was expected and what was
given. Backends receive only checked arguments; native backends check slot indices and sizes
again in native code (defence in depth), since they can also be called directly.

A layout is checked against the tensors it is used with, field by field, once per (layout,
tensors) pair: every plane's first and last reachable element must lie inside its tensor's
storage, so a hand-edited :class:`KVLayout` (``dataclasses.replace``) cannot steer a kernel outside
the engine's memory. Python integers do not overflow, so these bounds are exact; every field a
native backend receives also fits in int64.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.layout import KVLayout, dtype_name

if TYPE_CHECKING:
    import torch


# layout -> weak references to the tensors last checked against it. Engines pass the same KV
# tensors on every call, so a repeat check is an identity comparison (a tensor resized in place
# with ``set_``/``resize_`` after registration is not noticed; engines do not do that).
_checked: dict[KVLayout, tuple[weakref.ref[Any], ...]] = {}


def _seen_before(layout: KVLayout, kv_caches: Sequence[Any]) -> bool:
    refs = _checked.get(layout)
    return (
        refs is not None
        and len(refs) == len(kv_caches)
        and all(r() is t for r, t in zip(refs, kv_caches, strict=True))
    )


_INT64_MAX = 2**63 - 1


def _check_int(name: str, value: object, low: int, high: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, given {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected {low} <= {name} <= {high}, given {value}")
    return value


def plane_extent(layout: KVLayout) -> int:
    """Elements a plane spans from its start: 1 + the largest element offset any
    ``(block, token, head, channel)`` reaches (exact: Python integers do not wrap)."""
    counts = (layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_size)
    return 1 + sum((n - 1) * s for n, s in zip(counts, layout.strides, strict=True))


def check_planes_fit(layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> None:
    """Every field of ``layout`` a kernel indexes with, against the tensors it will index.

    ``element_size`` must be the tensors' element size; counts >= 1; strides in [0, 2**63);
    ``plane_tensor[p]`` in ``[0, num_tensors)``; and plane ``p`` must span elements
    ``[plane_offset[p], plane_offset[p] + extent)`` that lie inside the storage of
    ``kv_caches[plane_tensor[p]]`` from its first element on. A misfit is a ValueError naming the field.
    """
    element_size = kv_caches[0].element_size()
    _check_int("element_size", layout.element_size, 1)
    if layout.element_size != element_size:
        raise ValueError(
            f"element_size: expected {element_size} (bytes per {layout.dtype} element of kv_caches), "
            f"given {layout.element_size}"
        )
    for name in ("num_layers", "num_blocks", "block_size", "num_kv_heads", "head_size"):
        _check_int(name, getattr(layout, name), 1)
    for name in ("block_stride", "token_stride", "head_stride", "channel_stride"):
        _check_int(name, getattr(layout, name), 0)
    extent = plane_extent(layout)
    reach = [t.untyped_storage().nbytes() - t.storage_offset() * element_size for t in kv_caches]
    if extent * element_size > max(reach):
        raise ValueError(
            "block_stride, token_stride, head_stride, channel_stride: a plane spans "
            f"1 + (num_blocks - 1) * block_stride + ... = {extent} elements ({extent * element_size} "
            f"bytes) with strides {layout.strides} (block, token, head, channel), expected at most "
            f"the {max(reach)} bytes of the largest tensor of kv_caches"
        )
    for p, (t, offset) in enumerate(zip(layout.plane_tensor, layout.plane_offset, strict=True)):
        _check_int(f"plane_tensor[{p}]", t, 0, len(kv_caches) - 1)
        _check_int(f"plane_offset[{p}]", offset, 0)
        if (offset + extent) * element_size > reach[t]:
            raise ValueError(
                f"plane_offset[{p}]: plane {p} (kv {p // layout.num_layers}, layer {p % layout.num_layers}) "
                f"spans elements [{offset}, {offset} + {extent}) of kv_caches[{t}], expected to fit in the "
                f"{reach[t]} bytes of its storage from its first element ({element_size} per element)"
            )


def check_kv_caches(layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> None:
    """``kv_caches`` must be the tensors ``layout`` was detected from (count, shape, strides), and
    every plane of ``layout`` must lie inside its tensor (:func:`check_planes_fit`). Cached per
    (layout, tensors) pair."""
    import torch

    if isinstance(kv_caches, (list, tuple)) and _seen_before(layout, kv_caches):
        return

    if not isinstance(kv_caches, (list, tuple)):
        raise TypeError(f"kv_caches: expected a list or tuple of tensors, given {type(kv_caches).__name__}")
    if len(kv_caches) != layout.num_tensors:
        raise ValueError(
            f"kv_caches: expected {layout.num_tensors} tensors for layout {layout.kind} "
            f"({layout.num_layers} layers), given {len(kv_caches)}"
        )
    device = None
    for i, t in enumerate(kv_caches):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"kv_caches[{i}]: expected torch.Tensor, given {type(t).__name__}")
        if dtype_name(t.dtype) != layout.dtype:
            raise TypeError(f"kv_caches[{i}]: expected dtype {layout.dtype}, given {dtype_name(t.dtype)}")
        if tuple(t.shape) != layout.tensor_shape:
            raise ValueError(f"kv_caches[{i}]: expected shape {layout.tensor_shape}, given {tuple(t.shape)}")
        if tuple(t.stride()) != layout.tensor_stride:
            raise ValueError(
                f"kv_caches[{i}]: expected strides {layout.tensor_stride}, given {tuple(t.stride())}"
            )
        if device is None:
            device = t.device
        elif t.device != device:
            raise ValueError(f"kv_caches[{i}]: expected device {device}, given {t.device}")
    check_planes_fit(layout, kv_caches)
    if len(_checked) > 64:  # bounded: a process registers a handful of layouts
        _checked.clear()
    _checked[layout] = tuple(weakref.ref(t) for t in kv_caches)


def check_chunk(name: str, layout: KVLayout, chunk: torch.Tensor) -> int:
    """Check a host chunk ``[num_kv, num_layers, num_tokens, hidden]``; return ``num_tokens``."""
    import torch

    if not isinstance(chunk, torch.Tensor):
        raise TypeError(f"{name}: expected torch.Tensor, given {type(chunk).__name__}")
    if dtype_name(chunk.dtype) != layout.dtype:
        raise TypeError(f"{name}: expected dtype {layout.dtype}, given {dtype_name(chunk.dtype)}")
    if chunk.dim() != 4 or (
        chunk.shape[0] != layout.num_kv
        or chunk.shape[1] != layout.num_layers
        or chunk.shape[3] != layout.hidden
    ):
        raise ValueError(
            f"{name}: expected shape [{layout.num_kv}, {layout.num_layers}, num_tokens, "
            f"{layout.hidden}] ([num_kv, num_layers, num_tokens, hidden]), given {tuple(chunk.shape)}"
        )
    if not chunk.is_contiguous():
        raise ValueError(f"{name}: expected a contiguous tensor, given strides {chunk.stride()}")
    return int(chunk.shape[2])


def check_slot_mapping(
    layout: KVLayout, slot_mapping: torch.Tensor, num_tokens: int, skip_prefix: int
) -> None:
    """int64 ``[num_tokens]`` with every slot after ``skip_prefix`` in ``[-1, num_slots)``."""
    import torch

    if not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(f"slot_mapping: expected torch.Tensor, given {type(slot_mapping).__name__}")
    if slot_mapping.dtype != torch.int64:
        raise TypeError(f"slot_mapping: expected dtype int64, given {dtype_name(slot_mapping.dtype)}")
    if slot_mapping.dim() != 1 or slot_mapping.shape[0] != num_tokens:
        raise ValueError(
            f"slot_mapping: expected shape [{num_tokens}] (one slot per chunk token), "
            f"given {tuple(slot_mapping.shape)}"
        )
    if isinstance(skip_prefix, bool) or not isinstance(skip_prefix, int):
        raise TypeError(f"skip_prefix: expected int, given {type(skip_prefix).__name__}")
    if not 0 <= skip_prefix <= num_tokens:
        raise ValueError(f"skip_prefix: expected 0 <= skip_prefix <= {num_tokens}, given {skip_prefix}")
    live = slot_mapping[skip_prefix:]
    if live.numel() == 0:
        return
    lowest, highest = torch.aminmax(live)  # one pass; locate the culprit only on failure
    if int(lowest) < -1 or int(highest) >= layout.num_slots:
        bad = (live < -1) | (live >= layout.num_slots)
        i = int(torch.nonzero(bad)[0, 0]) + skip_prefix
        raise ValueError(
            f"slot_mapping[{i}]: expected slots in [-1, {layout.num_slots}) "
            f"(num_blocks {layout.num_blocks} * block_size {layout.block_size}), "
            f"given {int(slot_mapping[i])} at index {i}"
        )


def check_devices(
    kv_caches: Sequence[torch.Tensor], slot_mapping: torch.Tensor, chunk_name: str, chunk: torch.Tensor
) -> None:
    """``slot_mapping`` and the chunk live on the host or on the KV's device; never on ``meta``."""
    kv_device = kv_caches[0].device
    if kv_device.type == "meta":
        raise ValueError("kv_caches: expected tensors with storage, given tensors on device meta")
    for name, t in (("slot_mapping", slot_mapping), (chunk_name, chunk)):
        if t.device.type != "cpu" and t.device != kv_device:
            raise ValueError(f"{name}: expected device cpu or {kv_device} (the KV's), given {t.device}")


def check_transfer(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    chunk_name: str,
    chunk: torch.Tensor,
    skip_prefix: int,
) -> None:
    """All checks for one gather (``chunk_name="out"``) or scatter (``"src"``)."""
    import torch

    check_kv_caches(layout, kv_caches)
    num_tokens = check_chunk(chunk_name, layout, chunk)
    if not isinstance(slot_mapping, torch.Tensor):  # numpy arrays have .device too: test the type
        raise TypeError(f"slot_mapping: expected torch.Tensor, given {type(slot_mapping).__name__}")
    check_devices(kv_caches, slot_mapping, chunk_name, chunk)
    check_slot_mapping(layout, slot_mapping, num_tokens, skip_prefix)
