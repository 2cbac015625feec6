"""Reference backend: gather and scatter in pure PyTorch, for every layout on every torch device.

It is the fallback for anything a vendor backend does not cover, and the oracle the conformance
suite compares every backend against, bit for bit. It is vectorised: one advanced-indexing copy
per ``(kv, layer)`` plane, never a Python loop per token.

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
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import API_VERSION, Capabilities

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def as_bits(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as the integer dtype of the same width (same shape and strides)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def plane_view(layout: KVLayout, kv_caches: Sequence[torch.Tensor], plane: int) -> torch.Tensor:
    """Integer view ``[num_blocks, block_size, num_kv_heads, head_size]`` of one (kv, layer) plane."""
    base = as_bits(kv_caches[layout.plane_tensor[plane]])
    return base.as_strided(
        (layout.num_blocks, layout.block_size, layout.num_kv_heads, layout.head_size),
        layout.strides,
        base.storage_offset() + layout.plane_offset[plane],
    )


def slot_view(layout: KVLayout, kv_caches: Sequence[torch.Tensor], plane: int) -> torch.Tensor | None:
    """Integer view ``[num_slots, num_kv_heads, head_size]`` of one plane, or None.

    ``[num_slots, hidden]`` when a token's heads are adjacent. Possible when a block is ``block_size`` evenly spaced tokens (``block_stride ==
    block_size * token_stride``, or one token per block), so slot numbers index the view directly.
    """
    if layout.block_size == 1:
        step = layout.block_stride
    elif layout.block_stride == layout.block_size * layout.token_stride:
        step = layout.token_stride
    else:
        return None
    base = as_bits(kv_caches[layout.plane_tensor[plane]])
    offset = base.storage_offset() + layout.plane_offset[plane]
    if layout.contiguous_run() == layout.hidden:  # whole rows: a 2-D view indexes fastest
        return base.as_strided((layout.num_slots, layout.hidden), (step, 1), offset)
    return base.as_strided(
        (layout.num_slots, layout.num_kv_heads, layout.head_size),
        (step, layout.head_stride, layout.channel_stride),
        offset,
    )


def _plane_views(
    layout: KVLayout, kv_caches: Sequence[torch.Tensor], need_plane_view: bool
) -> list[tuple[torch.Tensor | None, torch.Tensor | None]]:
    """``(slot_view, plane_view)`` of every plane, all built before the first copy.

    ``plane_view`` is built when ``need_plane_view`` or when there is no ``slot_view``; torch
    bounds-checks every view against its storage as it is built.
    """
    views: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []
    for p in range(layout.num_kv * layout.num_layers):
        by_slot = slot_view(layout, kv_caches, p)
        whole = plane_view(layout, kv_caches, p) if need_plane_view or by_slot is None else None
        views.append((by_slot, whole))
    return views


class _Rows:
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
    rows = _Rows(layout, slot_mapping, skip_prefix, kv_caches[0].device)
    if rows.count == 0:
        return
    out_bits = as_bits(out)
    token_index = None if rows.token_index is None else rows.token_index.to(out.device)
    direct = token_index is None and out.device == kv_caches[0].device
    # every view first: nothing is written when one fails
    for plane, (by_slot, whole) in enumerate(_plane_views(layout, kv_caches, not direct)):
        kv, layer = divmod(plane, layout.num_layers)
        dst = out_bits[kv, layer]
        if direct and by_slot is not None:
            # one copy, straight into the chunk
            moved = dst[rows.skip_prefix :].view(rows.count, *by_slot.shape[1:])
            torch.index_select(by_slot, 0, rows.slots, out=moved)
            continue
        assert whole is not None  # built whenever by_slot is not used
        picked = whole[rows.block, rows.offset]
        picked = picked.reshape(rows.count, layout.hidden)
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
    rows = _Rows(layout, slot_mapping, skip_prefix, device)
    if rows.count == 0:
        return
    src_bits = as_bits(src)
    token_index = None if rows.token_index is None else rows.token_index.to(src.device)
    shape = (rows.count, layout.num_kv_heads, layout.head_size)
    # every view first: nothing is written when one fails
    for plane, (by_slot, whole) in enumerate(_plane_views(layout, kv_caches, False)):
        kv, layer = divmod(plane, layout.num_layers)
        chunk_rows = src_bits[kv, layer]
        if token_index is None:
            picked = chunk_rows[rows.skip_prefix :]
        else:
            picked = chunk_rows.index_select(0, token_index)
        picked = picked.to(device)
        if by_slot is not None:
            by_slot.index_copy_(0, rows.slots, picked.view(rows.count, *by_slot.shape[1:]))
        else:
            assert whole is not None  # built whenever by_slot is None
            whole[rows.block, rows.offset] = picked.view(shape)


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
