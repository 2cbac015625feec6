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

import math
import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

from lmcache_core.arrays import (
    NUMPY,
    TORCH,
    ArrayInfo,
    array_family,
    array_info,
    is_contiguous,
    torch_dtype_name,
    type_text,
)
from lmcache_core.layout import MAX_KINDS, MAX_LEVELS, ChunkFormat, KVLayout

# id(layout) -> (the layout, weak references to the tensors last checked against it). Engines
# pass the same layout and KV tensors on every call, so a repeat check is an identity comparison
# (a tensor resized in place with ``set_``/``resize_`` after registration is not noticed; engines
# do not do that). Keyed by identity, not equality: hashing a layout costs ~1 us a call. The
# layout is held, so its id is not reused while it is here; an equal layout that is another
# object is checked again.
_checked: dict[int, tuple[KVLayout, tuple[weakref.ref[Any], ...]]] = {}


def _seen_before(layout: KVLayout, kv_caches: Sequence[Any]) -> bool:
    hit = _checked.get(id(layout))
    if hit is None or hit[0] is not layout:
        return False
    refs = hit[1]
    return len(refs) == len(kv_caches) and all(r() is t for r, t in zip(refs, kv_caches, strict=True))


_INT64_MAX = 2**63 - 1


def _check_int(name: str, value: object, low: int, high: int = _INT64_MAX) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected int, given {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name}: expected {low} <= {name} <= {high}, given {value}")
    return value


def plane_extent(layout: KVLayout, kind: int = 0) -> int:
    """Elements a plane of kind ``kind`` spans from its start: 1 + the largest element offset any
    ``(block, token, head, channel)`` reaches, over every level of its split axes (exact: Python
    integers do not wrap)."""
    return layout.kinds[kind].extent(layout.num_blocks)


def _check_kind(layout: KVLayout, index: int) -> None:
    """Counts >= 1, strides in [0, 2**63), level sizes multiplying to block_size and width."""
    k = layout.kinds[index]
    where = f"kinds[{index}]"
    for name in ("width", "heads", "element_size", "padded_width"):
        _check_int(f"{where}.{name}", getattr(k, name), 1)
    for name in ("block_stride", "head_stride"):
        _check_int(f"{where}.{name}", getattr(k, name), 0)
    for axis, total in (("token", layout.block_size), ("channel", k.width)):
        levels = getattr(k, axis)
        if not 1 <= len(levels) <= MAX_LEVELS:
            raise ValueError(f"{where}.{axis}: expected 1 to {MAX_LEVELS} levels, given {len(levels)}")
        for n, a in enumerate(levels):
            _check_int(f"{where}.{axis}[{n}].size", a.size, 1)
            _check_int(f"{where}.{axis}[{n}].stride", a.stride, 0)
        if math.prod(a.size for a in levels) != total:
            raise ValueError(
                f"{where}.{axis}: expected level sizes multiplying to {total}, given {[a.size for a in levels]}"
            )


def check_planes_fit(layout: KVLayout, kv_caches: Sequence[Any]) -> None:
    """Every field of ``layout`` a kernel indexes with, against the tensors it will index.

    Per kind: counts >= 1, strides in [0, 2**63), split-axis level sizes multiplying to
    ``block_size`` / ``width``, and ``element_size`` equal to the element size of every tensor
    holding a plane of that kind. ``plane_tensor[p]`` in ``[0, num_tensors)``; plane ``p`` must
    span elements ``[plane_offset[p], plane_offset[p] + extent)`` (its kind's extent, over every
    level) that lie inside the storage of ``kv_caches[plane_tensor[p]]`` from its first element on.
    A misfit is a ValueError naming the field.
    """
    infos = [array_info(t, f"kv_caches[{i}]") for i, t in enumerate(kv_caches)]
    for name in ("num_layers", "num_blocks", "block_size"):
        _check_int(name, getattr(layout, name), 1)
    if not 1 <= len(layout.kinds) <= MAX_KINDS:
        raise ValueError(f"kinds: expected 1 to {MAX_KINDS} plane kinds, given {len(layout.kinds)}")
    for index in range(len(layout.kinds)):
        _check_kind(layout, index)
    extents = [plane_extent(layout, index) for index in range(len(layout.kinds))]
    reach = [info.reach_bytes for info in infos]
    for index, (kind, extent) in enumerate(zip(layout.kinds, extents, strict=True)):
        if extent * kind.element_size > max(reach):
            raise ValueError(
                f"block_stride, token_stride, head_stride, channel_stride: a plane spans "
                f"1 + (num_blocks - 1) * block_stride + ... = {extent} elements "
                f"({extent * kind.element_size} bytes) with kinds[{index}] {kind.describe()}, expected "
                f"at most the {max(reach)} bytes of the largest tensor of kv_caches"
            )
    for p, (t, offset) in enumerate(zip(layout.plane_tensor, layout.plane_offset, strict=True)):
        _check_int(f"plane_tensor[{p}]", t, 0, len(kv_caches) - 1)
        _check_int(f"plane_offset[{p}]", offset, 0)
        index, layer = divmod(p, layout.num_layers)
        kind = layout.kinds[index]
        size = kind.element_size
        if infos[t].element_size != size:
            raise ValueError(
                f"kinds[{index}].element_size: expected {infos[t].element_size} (bytes per "
                f"{infos[t].dtype} element of kv_caches[{t}], which holds plane {p}), given {size}"
            )
        extent = extents[index]
        if (offset + extent) * size > reach[t]:
            raise ValueError(
                f"plane_offset[{p}]: plane {p} (kind {kind.name}, layer {layer}) spans elements "
                f"[{offset}, {offset} + {extent}) of kv_caches[{t}] (strides: {kind.describe()}), "
                f"expected to fit in the {reach[t]} bytes of its storage from its first element "
                f"({size} per element)"
            )


def _tensor_dtypes(layout: KVLayout) -> dict[int, str]:
    """Tensor index -> the dtype of the kinds with planes in it (ValueError when two differ)."""
    dtypes: dict[int, str] = {}
    for p, t in enumerate(layout.plane_tensor):
        dtype = layout.plane_kind(p).dtype
        if dtypes.setdefault(t, dtype) != dtype:
            raise ValueError(
                f"kinds: planes of dtypes {dtypes[t]} and {dtype} share kv_caches[{t}]; expected one dtype per tensor"
            )
    return dtypes


def check_kv_caches(layout: KVLayout, kv_caches: Sequence[Any]) -> str:
    """``kv_caches`` must be the arrays ``layout`` was detected from (count, family, dtype, shape,
    strides, one device), and every plane of ``layout`` must lie inside its array
    (:func:`check_planes_fit`). Returns the arrays' family (``"torch"``, ``"numpy"``, ``"jax"``:
    :mod:`lmcache_core.arrays`). Cached per (layout, arrays) pair."""
    if isinstance(kv_caches, (list, tuple)) and _seen_before(layout, kv_caches):
        return array_family(kv_caches[0]) or ""

    if not isinstance(kv_caches, (list, tuple)):
        raise TypeError(f"kv_caches: expected a list or tuple of tensors, given {type(kv_caches).__name__}")
    if len(kv_caches) != layout.num_tensors:
        raise ValueError(
            f"kv_caches: expected {layout.num_tensors} tensors for layout {layout.kind} "
            f"({layout.num_layers} layers), given {len(kv_caches)}"
        )
    dtypes = _tensor_dtypes(layout)
    first: ArrayInfo | None = None
    for i, t in enumerate(kv_caches):
        if first is not None and array_family(t) != first.family:
            raise TypeError(
                f"kv_caches[{i}]: expected {type_text(kv_caches[0])} like kv_caches[0], given {type_text(t)}"
            )
        info = array_info(t, f"kv_caches[{i}]")
        dtype = dtypes.get(i)
        if dtype is not None and info.dtype != dtype:
            raise TypeError(f"kv_caches[{i}]: expected dtype {dtype}, given {info.dtype}")
        if info.shape != layout.tensor_shapes[i]:
            raise ValueError(f"kv_caches[{i}]: expected shape {layout.tensor_shapes[i]}, given {info.shape}")
        if info.strides != layout.tensor_strides[i]:
            raise ValueError(
                f"kv_caches[{i}]: expected strides {layout.tensor_strides[i]}, given {info.strides}"
            )
        if first is None:
            first = info
        elif info.device != first.device:
            raise ValueError(f"kv_caches[{i}]: expected device {first.device}, given {info.device}")
    assert first is not None  # num_tensors >= 1 (KVLayout requires planes)
    if first.device_type == "meta":
        raise ValueError("kv_caches: expected tensors with storage, given tensors on device meta")
    check_planes_fit(layout, kv_caches)
    if len(_checked) > 64:  # bounded: a process registers a handful of layouts
        _checked.clear()
    _checked[id(layout)] = (layout, tuple(weakref.ref(t) for t in kv_caches))
    return first.family


class _Format(NamedTuple):
    """A layout's chunk format and what :func:`check_chunk` reads of it on every call."""

    fmt: ChunkFormat
    dtype: str | None  # the dtype of every section when they are alike (the 4-D form), else None
    hidden: int  # the sections' common hidden (0 when they differ)


# id(layout) -> (the layout, its _Format). Building the format costs ~3 us a call; the layout is
# held, so its id is not reused while it is here.
_formats: dict[int, tuple[KVLayout, _Format]] = {}


def _chunk_format(layout: KVLayout) -> _Format:
    hit = _formats.get(id(layout))
    if hit is not None and hit[0] is layout:
        return hit[1]
    fmt = layout.chunk_format
    uniform = fmt.is_uniform
    facts = _Format(fmt, fmt.dtype if uniform else None, fmt.hidden if uniform else 0)
    if len(_formats) > 64:  # bounded: a process registers a handful of layouts
        _formats.clear()
    _formats[id(layout)] = (layout, facts)
    return facts


def _host_chunk_types(family: str) -> str:
    return "torch.Tensor" if family == TORCH else "numpy.ndarray or host torch.Tensor"


def check_chunk(name: str, layout: KVLayout, chunk: Any, family: str = TORCH) -> int:
    """Check a host chunk of ``layout.chunk_format``; return ``num_tokens``.

    Either the typed 4-D ``[num_kv, num_layers, num_tokens, hidden]`` (formats whose sections are
    all alike), or contiguous 1-D uint8 bytes of any format (``chunk_format.nbytes(num_tokens)``:
    the sections back to back). For torch KV (``family``) the chunk is a torch tensor (host or
    the KV's device); for numpy and JAX KV it is a numpy array or a torch tensor in host memory
    (the core's L1 buffers).
    """
    chunk_family = array_family(chunk)
    if chunk_family not in ((TORCH,) if family == TORCH else (NUMPY, TORCH)):
        raise TypeError(f"{name}: expected {_host_chunk_types(family)}, given {type_text(chunk)}")
    if family == TORCH:  # torch fast path: the tensor's own metadata, no ArrayInfo (~4 us a call)
        dtype, shape, strides = torch_dtype_name(chunk.dtype), tuple(chunk.shape), chunk.stride()
        # torch's own test agrees with ArrayInfo.is_contiguous (size-1 axes free) unless empty
        contiguous = chunk.is_contiguous() if chunk.numel() else is_contiguous(shape, strides)
        writable = True
    else:
        info = array_info(chunk, name)
        if info.device_type != "cpu":
            raise ValueError(
                f"{name}: expected a chunk in host memory ({family} KV), given device {info.device}"
            )
        dtype, shape, strides = info.dtype, info.shape, info.strides
        contiguous, writable = info.is_contiguous(), info.writable
    fmt, uniform_dtype, hidden = _chunk_format(layout)
    if len(shape) == 1 and dtype == "uint8" and uniform_dtype != "uint8":
        if shape[0] % fmt.token_nbytes:
            raise ValueError(
                f"{name}: expected uint8 bytes of whole tokens ({fmt.token_nbytes} bytes per token of "
                f"chunk format {fmt.tag}), given {shape[0]} bytes"
            )
        num_tokens = shape[0] // fmt.token_nbytes
    elif uniform_dtype is None:
        raise ValueError(
            f"{name}: expected contiguous uint8 [num_tokens * {fmt.token_nbytes}] (chunk format "
            f"{fmt.tag} has sections of different widths or dtypes), given {dtype} {shape}"
        )
    else:
        if dtype != uniform_dtype:
            raise TypeError(f"{name}: expected dtype {uniform_dtype}, given {dtype}")
        num_kv, num_layers = fmt.num_kv, fmt.num_layers
        if len(shape) != 4 or shape[0] != num_kv or shape[1] != num_layers or shape[3] != hidden:
            raise ValueError(
                f"{name}: expected shape [{num_kv}, {num_layers}, num_tokens, "
                f"{hidden}] ([num_kv, num_layers, num_tokens, hidden]), given {shape}"
            )
        num_tokens = shape[2]
    if not contiguous:
        raise ValueError(f"{name}: expected a contiguous tensor, given strides {tuple(strides)}")
    if not writable:
        raise ValueError(f"{name}: expected a writable array, given a read-only one")
    return num_tokens


def _slot_types(family: str) -> str:
    return "torch.Tensor" if family == TORCH else "numpy.ndarray"


def check_slot_mapping(
    layout: KVLayout, slot_mapping: Any, num_tokens: int, skip_prefix: int, family: str = TORCH
) -> None:
    """int64 ``[num_tokens]`` with every slot after ``skip_prefix`` in ``[-1, num_slots)``.

    The slot mapping's type follows the KV (``family``): a torch tensor (host or the KV's device)
    for torch KV; a host numpy array for numpy and JAX KV (engines on those arrays compute slot
    mappings on the host). Anything else is a TypeError naming ``slot_mapping``.
    """
    expected = TORCH if family == TORCH else NUMPY
    if array_family(slot_mapping) != expected:  # numpy arrays have .device too: test the type
        raise TypeError(
            f"slot_mapping: expected {_slot_types(family)} (the KV are {family} arrays), "
            f"given {type_text(slot_mapping)}"
        )
    if family == TORCH:  # torch fast path: the tensor's own metadata, no ArrayInfo
        dtype, shape = torch_dtype_name(slot_mapping.dtype), tuple(slot_mapping.shape)
    else:
        info = array_info(slot_mapping, "slot_mapping")
        dtype, shape = info.dtype, info.shape
    if dtype != "int64":
        raise TypeError(f"slot_mapping: expected dtype int64, given {dtype}")
    if len(shape) != 1 or shape[0] != num_tokens:
        raise ValueError(
            f"slot_mapping: expected shape [{num_tokens}] (one slot per chunk token), given {shape}"
        )
    if isinstance(skip_prefix, bool) or not isinstance(skip_prefix, int):
        raise TypeError(f"skip_prefix: expected int, given {type(skip_prefix).__name__}")
    if not 0 <= skip_prefix <= num_tokens:
        raise ValueError(f"skip_prefix: expected 0 <= skip_prefix <= {num_tokens}, given {skip_prefix}")
    live = slot_mapping[skip_prefix:] if skip_prefix else slot_mapping  # a view costs ~1 us
    if int(live.shape[0]) == 0:
        return
    if family == TORCH:
        import torch

        low, high = torch.aminmax(live)  # one pass; locate the culprit only on failure
        lowest, highest = int(low), int(high)
    else:
        lowest, highest = int(live.min()), int(live.max())
    if lowest < -1 or highest >= layout.num_slots:
        bad = ((live < -1) | (live >= layout.num_slots)).tolist()
        i = bad.index(True) + skip_prefix
        raise ValueError(
            f"slot_mapping[{i}]: expected slots in [-1, {layout.num_slots}) "
            f"(num_blocks {layout.num_blocks} * block_size {layout.block_size}), "
            f"given {int(slot_mapping[i])} at index {i}"
        )


def check_devices(kv_caches: Sequence[Any], slot_mapping: Any, chunk_name: str, chunk: Any) -> None:
    """Torch KV: ``slot_mapping`` and the chunk live on the host or on the KV's device; never on
    ``meta`` (numpy and JAX KV take host slot mappings and chunks: checked by their types)."""
    kv_device = kv_caches[0].device
    if kv_device.type == "meta":
        raise ValueError("kv_caches: expected tensors with storage, given tensors on device meta")
    for name, t in (("slot_mapping", slot_mapping), (chunk_name, chunk)):
        if t.device.type != "cpu" and t.device != kv_device:
            raise ValueError(f"{name}: expected device cpu or {kv_device} (the KV's), given {t.device}")


def check_transfer(
    layout: KVLayout,
    kv_caches: Sequence[Any],
    slot_mapping: Any,
    chunk_name: str,
    chunk: Any,
    skip_prefix: int,
) -> str:
    """All checks for one gather (``chunk_name="out"``) or scatter (``"src"``); returns the KV's
    array family (:mod:`lmcache_core.arrays`): the chunk and slot mapping types follow it."""
    family = check_kv_caches(layout, kv_caches)
    num_tokens = check_chunk(chunk_name, layout, chunk, family)
    if family == TORCH:
        if array_family(slot_mapping) != TORCH:  # numpy arrays have .device too: test the type
            raise TypeError(
                f"slot_mapping: expected torch.Tensor (the KV are torch tensors), given {type_text(slot_mapping)}"
            )
        check_devices(kv_caches, slot_mapping, chunk_name, chunk)
    check_slot_mapping(layout, slot_mapping, num_tokens, skip_prefix, family)
    return family
