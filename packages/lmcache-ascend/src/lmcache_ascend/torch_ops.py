"""The torch-ops path: gather and scatter as per-plane index ops, on whatever device the KV live.

Used on an NPU whenever the compiled AscendC kernels are absent (:mod:`lmcache_ascend.ascendc`).
Device-agnostic: the same code runs on ``npu`` tensors (inside the backend's stream context, so
every op is enqueued on that stream) and on CPU tensors, where the core's conformance suite runs it
against the reference (test switch, :mod:`lmcache_ascend.probe`).

For each plane kind ``k`` and each call it builds one element index ``idx_k [n, hidden_k]``
(int64, on the KV device): ``row(slot) + head * head_stride + split(channel)`` from the kind's
geometry, where ``row(slot) = block * block_stride + split(token)`` (the ``kv_index.h`` math).
Each (kind, layer) plane is a 1-D integer view of its tensor from the plane's first element, so a
plane's move is one ``index_select`` (gather) or ``index_copy_`` (scatter) over ``idx_k``, the
same ops for separate K/V of their own widths, MLA nope 512 + rope 64, DSA's indexer, split or
padded channels. Chunk traffic is one copy per kind: device staging ``[num_layers, n, hidden_k]``
to or from the host section, asynchronous when the host memory is pinned.

Data moves through same-width integer views (bf16 as int16, fp8 as uint8): bit-exact, and dtypes
without index kernels work. Every view is built before the first write (torch bounds-checks each
against its storage), so a failure leaves KV and chunk untouched. The inputs were validated by
:class:`lmcache_core.backend.Backend`; nothing here validates again.

Shapes: ``kv_caches`` the layout's flat tensor list; ``slot_mapping`` int64 ``[num_tokens]``
(-1 skips); chunk a typed ``[num_kinds, num_layers, num_tokens, hidden]`` tensor or the uint8 bytes
of ``layout.chunk_format`` (one section ``[num_layers, num_tokens, hidden_k]`` per kind).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_core.backends.reference import as_bits, chunk_sections
from lmcache_core.layout import Axis, KVLayout, PlaneKind


def _split(index: torch.Tensor, axes: tuple[Axis, ...]) -> torch.Tensor:
    """Element offsets of ``index`` along a split axis (little-endian levels)."""
    offset = torch.zeros_like(index)
    rest = index
    for a in axes:
        offset += torch.remainder(rest, a.size) * a.stride
        rest = torch.div(rest, a.size, rounding_mode="floor")
    return offset


class _Rows:
    """The live chunk tokens of one call and their slots, on the KV device."""

    def __init__(
        self, layout: KVLayout, slot_mapping: torch.Tensor, skip_prefix: int, device: torch.device
    ) -> None:
        slots = slot_mapping[skip_prefix:].to(device)
        valid = slots >= 0
        self.all_live = bool(valid.all())
        self.token_index: torch.Tensor | None = None
        if not self.all_live:
            self.token_index = torch.nonzero(valid).squeeze(1) + skip_prefix
            slots = slots[valid]
        self.count = int(slots.numel())
        self.skip_prefix = skip_prefix
        self.block = torch.div(slots, layout.block_size, rounding_mode="floor")
        self.offset = slots - self.block * layout.block_size

    def element_index(self, kind: PlaneKind) -> torch.Tensor:
        """int64 ``[count * hidden]``: each live token's row of ``kind``, element offsets in a plane."""
        row = self.block * kind.block_stride + _split(self.offset, kind.token)
        channel = torch.arange(kind.width, device=row.device)
        heads = torch.arange(kind.heads, device=row.device) * kind.head_stride
        columns = (heads[:, None] + _split(channel, kind.channel)[None, :]).reshape(-1)
        return (row[:, None] + columns[None, :]).reshape(-1)


def _flat_planes(layout: KVLayout, kv_caches: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """1-D integer view of every plane from its first element, ``kind.extent(num_blocks)`` long;
    all built (and bounds-checked by torch) before anything is written."""
    flats = []
    for p in range(layout.num_planes):
        kind = layout.plane_kind(p)
        base = as_bits(kv_caches[layout.plane_tensor[p]])
        flats.append(
            base.as_strided(
                (kind.extent(layout.num_blocks),), (1,), base.storage_offset() + layout.plane_offset[p]
            )
        )
    return flats


def _prepare(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    chunk: torch.Tensor,
    skip_prefix: int,
) -> tuple[_Rows, list[torch.Tensor], list[torch.Tensor]] | None:
    """The live rows, the planes' flat views and the chunk's sections of one call; None when no
    token is live (nothing to move). Every view is built here, before either direction writes."""
    rows = _Rows(layout, slot_mapping, skip_prefix, kv_caches[0].device)
    if rows.count == 0:
        return None
    flats = _flat_planes(layout, kv_caches)
    return rows, flats, chunk_sections(layout, chunk, int(slot_mapping.shape[0]))


def gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
) -> None:
    """Copy the live tokens' rows of every plane into ``out`` (rows of skipped and -1 tokens untouched)."""
    prepared = _prepare(layout, kv_caches, slot_mapping, out, skip_prefix)
    if prepared is None:
        return
    rows, flats, sections = prepared
    device = kv_caches[0].device
    for k, kind in enumerate(layout.kinds):
        index = rows.element_index(kind)
        staging = torch.empty(
            (layout.num_layers, rows.count * kind.hidden),
            dtype=flats[k * layout.num_layers].dtype,
            device=device,
        )
        for layer in range(layout.num_layers):
            torch.index_select(flats[k * layout.num_layers + layer], 0, index, out=staging[layer])
        staged = staging.view(layout.num_layers, rows.count, kind.hidden)
        section = sections[k]
        if rows.token_index is None:
            section[:, skip_prefix:].copy_(staged, non_blocking=True)
        else:
            section.index_copy_(1, rows.token_index.to(section.device), staged.to(section.device))


def scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
) -> None:
    """Copy the live tokens' chunk rows of ``src`` into every plane's slots; nothing else is written."""
    prepared = _prepare(layout, kv_caches, slot_mapping, src, skip_prefix)
    if prepared is None:
        return
    rows, flats, sections = prepared
    device = kv_caches[0].device
    for k, kind in enumerate(layout.kinds):
        section = sections[k]
        if rows.token_index is None:
            picked = section[:, skip_prefix:]
        else:
            picked = section.index_select(1, rows.token_index.to(section.device))
        staged = picked.to(device, non_blocking=True).reshape(layout.num_layers, -1)
        index = rows.element_index(kind)
        for layer in range(layout.num_layers):
            flats[k * layout.num_layers + layer].index_copy_(0, index, staged[layer])
