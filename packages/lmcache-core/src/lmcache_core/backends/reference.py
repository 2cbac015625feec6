"""Reference backend: gather and scatter in pure PyTorch, for every layout on every torch device.

It is the fallback for anything a vendor backend does not cover, and the oracle the conformance
suite compares every backend against, bit for bit. It is vectorised: one advanced-indexing copy
per ``(kind, layer)`` plane, never a Python loop per token. A kind with one token and one
channel level (every layout before split axes) copies through a slot-indexed view, as it always
did; a kind with split axes (transposed or packed K/V, padded channels) indexes a view with one
dimension per level.

Data is moved through same-width integer views (bf16 as int16, fp8 as uint8, ...) so every copy
is bit-exact, NaN payloads included, and dtypes without indexing kernels (fp8) work.

Checks before the first byte: the kernel hooks are reached only through
:class:`lmcache_core.backend.Backend`, which runs :func:`lmcache_core.validation.check_transfer`
once (plane fit cached per (layout, tensors); one pass over the slots) before it calls them; the
hooks do not validate again. Each hook then builds every plane's view before it copies anything,
so torch refuses a view that would leave its storage (RuntimeError) before a byte moves. A failure
leaves the KV and the chunk untouched.

Must not: import any vendor module, or allocate per token.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import Axis, KVLayout, PlaneKind
from lmcache_core.plugin_api import API_VERSION, Capabilities

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as the integer dtype of the same width (same shape and strides)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def _levels_outer_first(axes: tuple[Axis, ...]) -> tuple[list[int], list[int]]:
    return [a.size for a in reversed(axes)], [a.stride for a in reversed(axes)]


def plane_view(layout: KVLayout, kv_caches: Sequence[torch.Tensor], plane: int) -> torch.Tensor:
    """Integer view of one (kind, layer) plane.

    ``[num_blocks, block_size, heads, width]`` for a kind with one token and one channel level;
    for split axes every level is its own dimension, outermost first:
    ``[num_blocks, token levels..., heads, channel levels...]``, so that flattening the token
    (channel) dimensions row-major gives the token (channel) index.
    """
    kind = layout.plane_kind(plane)
    base = as_bits(kv_caches[layout.plane_tensor[plane]])
    t_sizes, t_strides = _levels_outer_first(kind.token)
    c_sizes, c_strides = _levels_outer_first(kind.channel)
    return base.as_strided(
        (layout.num_blocks, *t_sizes, kind.heads, *c_sizes),
        (kind.block_stride, *t_strides, kind.head_stride, *c_strides),
        base.storage_offset() + layout.plane_offset[plane],
    )


def slot_view(layout: KVLayout, kv_caches: Sequence[torch.Tensor], plane: int) -> torch.Tensor | None:
    """Integer view ``[num_slots, heads, width]`` of one plane of a single-level kind, or None.

    ``[num_slots, hidden]`` when a token's heads are adjacent. Possible when a block is
    ``block_size`` evenly spaced tokens (``block_stride == block_size * token_stride``, or one
    token per block), so slot numbers index the view directly.
    """
    kind = layout.plane_kind(plane)
    if not kind.is_simple:
        return None
    if layout.block_size == 1:
        step = kind.block_stride
    elif kind.block_stride == layout.block_size * kind.token_stride:
        step = kind.token_stride
    else:
        return None
    base = as_bits(kv_caches[layout.plane_tensor[plane]])
    offset = base.storage_offset() + layout.plane_offset[plane]
    if kind.contiguous_run() == kind.hidden:  # whole rows: a 2-D view indexes fastest
        return base.as_strided((layout.num_slots, kind.hidden), (step, 1), offset)
    return base.as_strided(
        (layout.num_slots, kind.heads, kind.width), (step, kind.head_stride, kind.channel_stride), offset
    )


def _plane_views(
    layout: KVLayout, kv_caches: Sequence[torch.Tensor], need_plane_view: bool
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``(slot_view, plane_view)`` of every plane, all built before the first copy.

    ``plane_view`` is built when ``need_plane_view`` or when there is no ``slot_view``; torch
    bounds-checks every view against its storage as it is built.
    """
    views: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for p in range(layout.num_planes):
        by_slot = slot_view(layout, kv_caches, p)
        whole = plane_view(layout, kv_caches, p) if need_plane_view or by_slot is None else None
        views.append((by_slot, whole))
    return views


def chunk_sections(layout: KVLayout, chunk: torch.Tensor, num_tokens: int) -> list[torch.Tensor]:
    """Integer views ``[num_layers, num_tokens, hidden_k]`` of each kind's section of ``chunk``
    (the typed 4-D chunk, or its uint8 bytes)."""
    if chunk.dim() == 4:
        chunk_bits = as_bits(chunk)
        return [chunk_bits[k] for k in range(len(layout.kinds))]
    return [as_bits(v) for v in layout.chunk_format.views(chunk, num_tokens)]


class SlotRows:
    """Which chunk tokens move and where their slots are, computed once per call.

    ``token_index``: int64 ``[n]`` chunk token indices (None when every token from
    ``skip_prefix`` on moves); ``block``, ``offset``: int64 ``[n]`` on the KV device.
    """

    def __init__(
        self, layout: KVLayout, slot_mapping: torch.Tensor, skip_prefix: int, kv_device: torch.device
    ) -> None:
        slots = slot_mapping[skip_prefix:].to(kv_device)
        valid = slots >= 0
        if bool(valid.all()):
            self.token_index: torch.Tensor | None = None
        else:
            self.token_index = torch.nonzero(valid).squeeze(1) + skip_prefix
            slots = slots[valid]
        self.slots = slots
        self.count = int(slots.numel())
        self.skip_prefix = skip_prefix
        self.block = torch.div(slots, layout.block_size, rounding_mode="floor")
        self.offset = slots - self.block * layout.block_size
        self._index: dict[tuple[Axis, ...], tuple[torch.Tensor, ...]] = {}

    def index(self, kind: PlaneKind) -> tuple[torch.Tensor, ...]:
        """``(block, token digits outermost first)``: the advanced index of :func:`plane_view`."""
        hit = self._index.get(kind.token)
        if hit is None:
            digits, rest = [], self.offset
            for a in kind.token:
                digits.append(torch.remainder(rest, a.size))
                rest = torch.div(rest, a.size, rounding_mode="floor")
            hit = self._index[kind.token] = (self.block, *reversed(digits))
        return hit


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return API_VERSION


@hookimpl
def lmcache_capabilities() -> Capabilities:
    return Capabilities(pinned_host=_accelerator_available(), status="ok (pure PyTorch)")


@hookimpl
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> None:
    rows = SlotRows(layout, slot_mapping, skip_prefix, kv_caches[0].device)
    if rows.count == 0:
        return
    sections = chunk_sections(layout, out, int(slot_mapping.shape[0]))
    token_index = None if rows.token_index is None else rows.token_index.to(out.device)
    direct = token_index is None and out.device == kv_caches[0].device
    # every view first: nothing is written when one fails
    for plane, (by_slot, whole) in enumerate(_plane_views(layout, kv_caches, not direct)):
        index, layer = divmod(plane, layout.num_layers)
        kind = layout.kinds[index]
        dst = sections[index][layer]
        if direct and by_slot is not None:
            # one copy, straight into the chunk
            moved = dst[rows.skip_prefix :].view(rows.count, *by_slot.shape[1:])
            torch.index_select(by_slot, 0, rows.slots, out=moved)
            continue
        assert whole is not None  # built whenever by_slot is not used
        picked = whole[rows.index(kind)].reshape(rows.count, kind.hidden)
        if token_index is None:
            dst[rows.skip_prefix :].copy_(picked)
        else:
            dst.index_copy_(0, token_index, picked.to(out.device))


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> None:
    device = kv_caches[0].device
    rows = SlotRows(layout, slot_mapping, skip_prefix, device)
    if rows.count == 0:
        return
    sections = chunk_sections(layout, src, int(slot_mapping.shape[0]))
    token_index = None if rows.token_index is None else rows.token_index.to(src.device)
    # every view first: nothing is written when one fails
    for plane, (by_slot, whole) in enumerate(_plane_views(layout, kv_caches, False)):
        index, layer = divmod(plane, layout.num_layers)
        kind = layout.kinds[index]
        chunk_rows = sections[index][layer]
        if token_index is None:
            picked = chunk_rows[rows.skip_prefix :]
        else:
            picked = chunk_rows.index_select(0, token_index)
        picked = picked.to(device)
        if by_slot is not None:
            by_slot.index_copy_(0, rows.slots, picked.view(rows.count, *by_slot.shape[1:]))
        else:
            assert whole is not None  # built whenever by_slot is None
            channel_sizes = [a.size for a in reversed(kind.channel)]
            whole[rows.index(kind)] = picked.view(rows.count, kind.heads, *channel_sizes)


def _accelerator_available() -> bool:
    accel = getattr(torch, "accelerator", None)
    return bool(accel is not None and accel.is_available())


@hookimpl
def lmcache_alloc_host(nbytes: int, pinned: bool) -> torch.Tensor:
    return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pinned and _accelerator_available())


@hookimpl
def lmcache_new_stream(device: Any) -> int:
    return 0  # the reference runs on the device's current stream


#: The event of a device without streams (CPU): its work is done when the call returns.
_DONE = 0


@hookimpl
def lmcache_current_stream(device: Any) -> int:
    return 0  # the reference runs on the device's current stream


@hookimpl
def lmcache_record_event(stream: int) -> Any:
    """A ``torch.Event`` on the accelerator's current stream, or ``_DONE`` on a host-only build."""
    if not _accelerator_available():
        return _DONE
    event = torch.Event()
    event.record(torch.accelerator.current_stream())
    return event


@hookimpl
def lmcache_stream_wait_event(stream: int, event: Any) -> None:
    if isinstance(event, torch.Event):
        event.wait(torch.accelerator.current_stream())  # every reference stream is the current one


@hookimpl
def lmcache_query_event(event: Any) -> bool:
    return bool(event.query()) if isinstance(event, torch.Event) else True


@hookimpl
def lmcache_destroy_stream(stream: int) -> None:
    return  # the reference makes no stream of its own


@hookimpl
def lmcache_synchronize(handle: Any) -> None:
    if isinstance(handle, torch.Event):
        handle.synchronize()
    elif _accelerator_available():
        torch.accelerator.synchronize()
