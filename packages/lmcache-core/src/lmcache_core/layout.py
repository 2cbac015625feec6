"""Paged KV layouts described as named logical axes with strides.

Every paged KV format that engines use is one instance of the same description:

* logical axes ``kind`` (the plane kinds: K and V, one MLA latent, MLA nope and rope, an
  indexer ...), ``layer``, ``block``, ``token`` (position inside a block), ``head`` and ``channel``
  (position inside a head);
* the ``(kind, layer)`` pairs ("planes") each live at an element offset inside one of the
  engine's tensors;
* each kind has its own geometry (:class:`PlaneKind`): width, heads, dtype, and strides; inside a
  plane, an element sits at ``block * block_stride + head * head_stride + split(token) +
  split(channel)``, where a split axis is 1 to :data:`MAX_LEVELS` mixed-radix levels
  (:class:`Axis`): one level is a plain stride, two or three describe transposed, pair-packed
  or tiled K/V (vLLM CPU's AMX and BFMMLA tiles);
* a kind may allocate more channels per head than it holds (``padded_width``, TPU's 128-lane
  padding); the chunk holds only the real ones.

A slot is ``block * block_size + token``. One kernel walks this description for every layout and
copies the longest contiguous run (:meth:`PlaneKind.contiguous_run`); there is no per-format code
path. Strides are read from the engine's tensors, so a permuted view (HND memory behind an NHD
shape) is described correctly without a special case.

This module imports nothing heavy: it runs in the core before torch is needed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

#: Logical axis names, in the order the host chunk format uses.
LOGICAL_AXES = ("kind", "layer", "block", "token", "head", "channel")

#: Most levels of one split (mixed-radix) token or channel axis; shared with ``kv_index.h``.
MAX_LEVELS = 3
#: Most plane kinds of one layout (K, V, indexer, indexer scale); shared with ``kv_index.h``.
MAX_KINDS = 4


def dtype_name(dtype: object) -> str:
    """Torch's name of a dtype without the ``torch.`` prefix (``torch.bfloat16`` -> ``"bfloat16"``):
    the form :attr:`PlaneKind.dtype`, :class:`lmcache_core.plugin_api.Capabilities` and messages use."""
    return str(dtype).removeprefix("torch.")


_DTYPE_SHORT = {
    "bfloat16": "bf16",
    "float16": "f16",
    "float32": "f32",
    "float64": "f64",
    "float8_e4m3fn": "e4m3",
    "float8_e5m2": "e5m2",
    "uint8": "u8",
    "int8": "i8",
}


class ChunkSection(NamedTuple):
    """One plane kind's part of a host chunk: ``[num_layers, num_tokens, hidden]`` of ``dtype``."""

    name: str
    hidden: int
    dtype: str
    element_size: int


@dataclass(frozen=True)
class ChunkFormat:
    """Byte format of a contiguous KV chunk in host memory: one section per plane kind.

    Section ``k`` is ``[num_layers, num_tokens, hidden_k]`` elements of ``dtype_k``
    (``hidden_k = heads_k * width_k``, real channels only, padding never stored); the sections lie
    back to back in kind order, and each starts on a multiple of its element size for any token
    count (a format where it would not is refused). When every section has the same ``hidden`` and dtype the bytes are
    exactly the 4-D ``[num_kv, num_layers, num_tokens, hidden]`` tensor (``num_kv`` 2 for K and V,
    1 for an MLA latent), which :meth:`shape` gives. The chunk never depends on the paging layout.
    """

    num_layers: int
    sections: tuple[ChunkSection, ...]

    def __post_init__(self) -> None:
        if not 1 <= len(self.sections) <= MAX_KINDS:
            raise ValueError(f"sections: expected 1 to {MAX_KINDS}, given {len(self.sections)}")
        object.__setattr__(self, "sections", tuple(ChunkSection(*s) for s in self.sections))
        # Sections lie back to back, so each must start on a multiple of its element size for every
        # token count (a typed view of it, or an element copy, needs it); a token's bytes of the
        # sections before section k must be a multiple of its element size.
        before = 0
        for k, s in enumerate(self.sections):
            if (self.num_layers * before) % s.element_size:
                raise ValueError(
                    f"sections[{k}] ({s.name}, {s.dtype}): expected to start on a multiple of its "
                    f"element size {s.element_size} bytes, given sections before it of "
                    f"{self.num_layers * before} bytes per token; order kinds by descending element size"
                )
            before += s.hidden * s.element_size

    @classmethod
    def uniform(cls, num_kv: int, num_layers: int, hidden: int, dtype: str, element_size: int) -> ChunkFormat:
        """``num_kv`` equal sections (``k``, ``v``; ``latent`` when ``num_kv`` is 1)."""
        names = ("latent",) if num_kv == 1 else ("k", "v", "indexer", "indexer_scale")[:num_kv]
        return cls(num_layers, tuple(ChunkSection(n, hidden, dtype, element_size) for n in names))

    @property
    def is_uniform(self) -> bool:
        """True when every section has the same ``hidden`` and dtype (the 4-D form exists)."""
        first = self.sections[0]
        return all(s[1:] == first[1:] for s in self.sections)

    def _common(self, field: str) -> Any:
        if not self.is_uniform:
            raise ValueError(
                f"chunk format {self.tag}: {field} differs per section; use ChunkFormat.sections"
            )
        return getattr(self.sections[0], field)

    @property
    def num_kv(self) -> int:
        """Number of sections (plane kinds)."""
        return len(self.sections)

    @property
    def hidden(self) -> int:
        """Elements per token row of every section (uniform formats only; else ValueError)."""
        return int(self._common("hidden"))

    @property
    def dtype(self) -> str:
        """Dtype of every section (uniform formats only; else ValueError)."""
        return str(self._common("dtype"))

    @property
    def element_size(self) -> int:
        """Bytes per element of every section (uniform formats only; else ValueError)."""
        return int(self._common("element_size"))

    @property
    def token_nbytes(self) -> int:
        """Bytes one token adds to a chunk: ``num_layers * sum(hidden_k * element_size_k)``."""
        return self.num_layers * sum(s.hidden * s.element_size for s in self.sections)

    def shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        """``[num_kv, num_layers, num_tokens, hidden]`` (uniform formats only; else ValueError)."""
        return (self.num_kv, self.num_layers, num_tokens, self.hidden)

    def nbytes(self, num_tokens: int) -> int:
        """Bytes of a chunk holding ``num_tokens`` tokens."""
        return num_tokens * self.token_nbytes

    def section_offsets(self, num_tokens: int) -> tuple[int, ...]:
        """Byte offset of each section in a chunk of ``num_tokens`` tokens."""
        offsets, at = [], 0
        for s in self.sections:
            offsets.append(at)
            at += self.num_layers * num_tokens * s.hidden * s.element_size
        return tuple(offsets)

    def views(self, buffer: Any, num_tokens: int) -> list[Any]:
        """Typed views ``[num_layers, num_tokens, hidden_k]`` of each section of the uint8
        ``buffer`` (a torch tensor of at least :meth:`nbytes` bytes)."""
        import torch

        out = []
        for s, at in zip(self.sections, self.section_offsets(num_tokens), strict=True):
            n = self.num_layers * num_tokens * s.hidden * s.element_size
            view = buffer[at : at + n].view(getattr(torch, s.dtype))
            out.append(view.view(self.num_layers, num_tokens, s.hidden))
        return out

    @property
    def tag(self) -> str:
        """Stable text naming this format inside cache keys.

        Uniform formats keep the historic ``kv{num_kv}.L{num_layers}.h{hidden}.{dtype}`` (e.g.
        ``kv2.L32.h1024.bfloat16``), so stored chunks stay valid; otherwise
        ``L{num_layers}.`` + the sections as ``{name}{hidden}{dtype short}`` joined by ``.``, e.g.
        ``L61.k512bf16.v64bf16``.
        """
        if self.is_uniform:
            s = self.sections[0]
            return f"kv{self.num_kv}.L{self.num_layers}.h{s.hidden}.{s.dtype}"
        parts = (f"{s.name}{s.hidden}{_DTYPE_SHORT.get(s.dtype, s.dtype)}" for s in self.sections)
        return f"L{self.num_layers}." + ".".join(parts)


@dataclass(frozen=True)
class Axis:
    """One level of a split (mixed-radix) axis: ``size`` values, ``stride`` elements apart."""

    size: int
    stride: int


def split_offset(axes: tuple[Axis, ...], index: int) -> int:
    """Element offset of ``index`` on a split axis: ``index = d0 + size0 * (d1 + size1 * ...)``
    (little-endian digits), offset ``sum(d_i * stride_i)``."""
    offset = 0
    for a in axes:
        index, digit = divmod(index, a.size)
        offset += digit * a.stride
    return offset


def _axes(levels: Any) -> tuple[Axis, ...]:
    """``levels`` as a tuple of :class:`Axis` (``(size, stride)`` pairs are accepted)."""
    return tuple(a if isinstance(a, Axis) else Axis(*a) for a in levels)


@dataclass(frozen=True)
class PlaneKind:
    """Geometry of one plane kind (``k``, ``v``, ``latent``, ``indexer`` ...) of a layout.

    Inside plane (kind, layer), element ``(block, token, head, channel)`` sits at
    ``block * block_stride + head * head_stride + split(token) + split(channel)`` elements from the
    plane's start, where ``split`` walks :attr:`token` or :attr:`channel` (:func:`split_offset`).
    ``token`` sizes multiply to the layout's ``block_size``, ``channel`` sizes to ``width``.

    ``width``: channels per head the chunk carries (real channels); ``padded_width``: channels the
    engine allocates per head (>= width; TPU pads to a multiple of 128; 0 means ``width``).
    ``heads``: heads of this kind (num_kv_heads for K/V; 1 for an MLA latent or an indexer).
    """

    name: str
    width: int
    heads: int
    dtype: str
    element_size: int
    block_stride: int
    head_stride: int
    token: tuple[Axis, ...]
    channel: tuple[Axis, ...]
    padded_width: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "token", _axes(self.token))
        object.__setattr__(self, "channel", _axes(self.channel))
        if self.padded_width == 0:
            object.__setattr__(self, "padded_width", self.width)
        for axis_name, axes in (("token", self.token), ("channel", self.channel)):
            if not 1 <= len(axes) <= MAX_LEVELS:
                raise ValueError(
                    f"kind {self.name}: {axis_name}: expected 1 to {MAX_LEVELS} levels, given {len(axes)}"
                )
        if math.prod(a.size for a in self.channel) != self.width:
            raise ValueError(
                f"kind {self.name}: channel: level sizes {[a.size for a in self.channel]} multiply to "
                f"{math.prod(a.size for a in self.channel)}, expected width {self.width}"
            )
        if self.padded_width < self.width:
            raise ValueError(
                f"kind {self.name}: padded_width: expected >= width {self.width}, given {self.padded_width}"
            )

    @property
    def hidden(self) -> int:
        """Elements of one token row of this kind in the chunk: ``heads * width``."""
        return self.heads * self.width

    @property
    def is_simple(self) -> bool:
        """One token level and one channel level: a plain strided ``(block, token, head, channel)``."""
        return len(self.token) == 1 and len(self.channel) == 1

    @property
    def token_stride(self) -> int:
        """Stride of the token axis (one level only; ValueError for a split axis)."""
        if len(self.token) != 1:
            raise ValueError(f"kind {self.name}: token_stride: the token axis is split; use .token")
        return self.token[0].stride

    @property
    def channel_stride(self) -> int:
        """Stride of the channel axis (one level only; ValueError for a split axis)."""
        if len(self.channel) != 1:
            raise ValueError(f"kind {self.name}: channel_stride: the channel axis is split; use .channel")
        return self.channel[0].stride

    def offset(self, block: int, token: int, head: int, channel: int) -> int:
        """Element offset of ``(block, token, head, channel)`` from the plane's start."""
        return (
            block * self.block_stride
            + head * self.head_stride
            + split_offset(self.token, token)
            + split_offset(self.channel, channel)
        )

    def extent(self, num_blocks: int) -> int:
        """1 + the largest element offset any ``(block, token, head, channel)`` reaches."""
        levels = (*self.token, *self.channel)
        return (
            1
            + (num_blocks - 1) * self.block_stride
            + (self.heads - 1) * self.head_stride
            + sum((a.size - 1) * a.stride for a in levels)
        )

    def contiguous_run(self) -> int:
        """Longest run of one token's row that is contiguous in the engine's memory.

        ``hidden`` when the channels are one level of stride 1 and heads are adjacent (or one
        head); ``width`` when heads are not adjacent; the first channel level's size when only it
        has stride 1; else 1.
        """
        first = self.channel[0]
        if first.stride != 1:
            return 1
        if len(self.channel) > 1:
            return first.size
        if self.head_stride == self.width or self.heads == 1:
            return self.hidden
        return self.width

    def describe(self) -> str:
        """``k[heads=8 width=128 bf16 block 65536 head 128 token (16:2048) channel (128:1)]``."""
        tok = " ".join(f"{a.size}:{a.stride}" for a in self.token)
        ch = " ".join(f"{a.size}:{a.stride}" for a in self.channel)
        pad = f" padded {self.padded_width}" if self.padded_width != self.width else ""
        return (
            f"{self.name}[heads={self.heads} width={self.width}{pad} {self.dtype} "
            f"block {self.block_stride} head {self.head_stride} token ({tok}) channel ({ch})]"
        )


_FLAT_KIND_FIELDS = {
    "num_kv_heads": "heads",
    "head_size": "width",
    "dtype": "dtype",
    "element_size": "element_size",
    "block_stride": "block_stride",
    "head_stride": "head_stride",
}


def _geometry(kind: PlaneKind) -> tuple[Any, ...]:
    return (
        kind.width,
        kind.heads,
        kind.dtype,
        kind.element_size,
        kind.block_stride,
        kind.head_stride,
        kind.token,
        kind.channel,
        kind.padded_width,
    )


@dataclass(frozen=True)
class KVLayout:
    """One group of layers of an engine's paged KV cache, bound to concrete tensors' geometry.

    Attributes are in elements (not bytes) unless named ``*_bytes``.

    ``kinds``: the plane kinds (1 to :data:`MAX_KINDS`), each with its own geometry
    (:class:`PlaneKind`). ``plane_tensor[p]`` and ``plane_offset[p]`` locate plane
    ``p = kind_index * num_layers + layer``: the index of the engine tensor holding it and the
    element offset (in that kind's elements) of ``(block=0, token=0, head=0, channel=0)`` from that
    tensor's first element. ``tensor_shapes[i]`` / ``tensor_strides[i]``: engine tensor ``i``'s
    shape and strides (the flat tensor list; see :func:`lmcache_core.layout_registry.flatten_kv_caches`).

    The flat fields of single-geometry layouts (``num_kv_heads``, ``head_size``, ``dtype``,
    ``token_stride`` ...) are properties: the common value when every kind agrees, else a
    ValueError naming the field; :meth:`uniform` builds such a layout from them.
    """

    kind: str
    num_layers: int
    num_blocks: int
    block_size: int
    kinds: tuple[PlaneKind, ...]
    num_tensors: int
    tensor_shapes: tuple[tuple[int, ...], ...]
    tensor_strides: tuple[tuple[int, ...], ...]
    plane_tensor: tuple[int, ...]
    plane_offset: tuple[int, ...]
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        if not 1 <= len(self.kinds) <= MAX_KINDS:
            raise ValueError(f"kinds: expected 1 to {MAX_KINDS} plane kinds, given {len(self.kinds)}")
        names = [k.name for k in self.kinds]
        if len(set(names)) != len(names):
            raise ValueError(f"kinds: expected distinct names, given {names}")
        planes = len(self.kinds) * self.num_layers
        if len(self.plane_tensor) != planes or len(self.plane_offset) != planes:
            raise ValueError(
                f"plane_tensor/plane_offset: expected {planes} entries (len(kinds) * num_layers), "
                f"given {len(self.plane_tensor)} and {len(self.plane_offset)}"
            )
        if len(self.tensor_shapes) != self.num_tensors or len(self.tensor_strides) != self.num_tensors:
            raise ValueError(
                f"tensor_shapes/tensor_strides: expected {self.num_tensors} entries (num_tensors), "
                f"given {len(self.tensor_shapes)} and {len(self.tensor_strides)}"
            )
        for k in self.kinds:
            tokens = math.prod(a.size for a in k.token)
            if tokens != self.block_size:
                raise ValueError(
                    f"kind {k.name}: token: level sizes {[a.size for a in k.token]} multiply to {tokens}, "
                    f"expected block_size {self.block_size}"
                )

    @classmethod
    def uniform(
        cls,
        *,
        kind: str,
        num_kv: int,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_size: int,
        dtype: str,
        element_size: int,
        num_tensors: int,
        tensor_shape: tuple[int, ...],
        tensor_stride: tuple[int, ...],
        plane_tensor: tuple[int, ...] | list[int],
        plane_offset: tuple[int, ...] | list[int],
        block_stride: int,
        token_stride: int,
        head_stride: int,
        channel_stride: int,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> KVLayout:
        """A layout whose kinds (``k``, ``v``; ``latent`` when ``num_kv`` is 1) share one geometry,
        from today's flat fields; every tensor has ``tensor_shape`` and ``tensor_stride``."""
        if num_kv not in (1, 2):
            raise ValueError(f"num_kv: expected 1 (MLA) or 2 (K and V), given {num_kv}")
        names = ("latent",) if num_kv == 1 else ("k", "v")
        kinds = tuple(
            PlaneKind(
                n,
                head_size,
                num_kv_heads,
                dtype,
                element_size,
                block_stride,
                head_stride,
                (Axis(block_size, token_stride),),
                (Axis(head_size, channel_stride),),
            )
            for n in names
        )
        return cls(
            kind=kind,
            num_layers=num_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            kinds=kinds,
            num_tensors=num_tensors,
            tensor_shapes=(tuple(tensor_shape),) * num_tensors,
            tensor_strides=(tuple(tensor_stride),) * num_tensors,
            plane_tensor=tuple(plane_tensor),
            plane_offset=tuple(plane_offset),
            extra=extra,
        )

    # ---- the flat fields of single-geometry layouts -----------------------------------------------

    @property
    def is_uniform(self) -> bool:
        """Every kind has the same geometry and one token and one channel level."""
        first = _geometry(self.kinds[0])
        return self.kinds[0].is_simple and all(_geometry(k) == first for k in self.kinds[1:])

    def _common(self, field_name: str, value: Any) -> Any:
        values = {value(k) for k in self.kinds}
        if len(values) != 1:
            raise ValueError(
                f"layout {self.kind}: {field_name} differs per plane kind "
                f"({', '.join(k.name for k in self.kinds)}); use layout.kinds"
            )
        return values.pop()

    @property
    def num_kv(self) -> int:
        """Number of plane kinds (2 for K and V, 1 for an MLA latent)."""
        return len(self.kinds)

    @property
    def num_kv_heads(self) -> int:
        return int(self._common("num_kv_heads", lambda k: k.heads))

    @property
    def head_size(self) -> int:
        return int(self._common("head_size", lambda k: k.width))

    @property
    def dtype(self) -> str:
        return str(self._common("dtype", lambda k: k.dtype))

    @property
    def element_size(self) -> int:
        return int(self._common("element_size", lambda k: k.element_size))

    @property
    def block_stride(self) -> int:
        return int(self._common("block_stride", lambda k: k.block_stride))

    @property
    def head_stride(self) -> int:
        return int(self._common("head_stride", lambda k: k.head_stride))

    @property
    def token_stride(self) -> int:
        return int(self._common("token_stride", lambda k: k.token if len(k.token) > 1 else k.token_stride))

    @property
    def channel_stride(self) -> int:
        return int(
            self._common("channel_stride", lambda k: k.channel if len(k.channel) > 1 else k.channel_stride)
        )

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """``(block, token, head, channel)`` strides in elements (single-geometry layouts only)."""
        return (self.block_stride, self.token_stride, self.head_stride, self.channel_stride)

    @property
    def hidden(self) -> int:
        """Elements per token per plane: ``num_kv_heads * head_size`` (equal kinds only)."""
        return int(self._common("hidden", lambda k: k.hidden))

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        """The shape every engine tensor has (ValueError when they differ)."""
        if len(set(self.tensor_shapes)) != 1:
            raise ValueError(f"layout {self.kind}: tensor_shape differs per tensor; use tensor_shapes")
        return self.tensor_shapes[0]

    @property
    def tensor_stride(self) -> tuple[int, ...]:
        """The strides every engine tensor has (ValueError when they differ)."""
        if len(set(self.tensor_strides)) != 1:
            raise ValueError(f"layout {self.kind}: tensor_stride differs per tensor; use tensor_strides")
        return self.tensor_strides[0]

    def replace_geometry(self, **changes: Any) -> KVLayout:
        """A copy with ``changes`` applied, where the flat fields of :meth:`uniform`
        (``num_kv_heads``, ``head_size``, ``dtype``, ``element_size``, ``block_stride``,
        ``token_stride``, ``head_stride``, ``channel_stride``) change every kind (a one-level
        axis each) and :class:`KVLayout` fields change the layout (tests and tools; nothing here
        is validated beyond the constructors: :mod:`lmcache_core.validation` checks use)."""
        kind_changes: dict[str, Any] = {}
        for flat, name in _FLAT_KIND_FIELDS.items():
            if flat in changes:
                kind_changes[name] = changes.pop(flat)
        token_stride = changes.pop("token_stride", None)
        channel_stride = changes.pop("channel_stride", None)
        block_size = changes.get("block_size", self.block_size)
        kinds = []
        for k in self.kinds:
            new = dataclasses.replace(k, **kind_changes)
            width = new.width
            tok = k.token if token_stride is None and block_size == self.block_size else None
            if tok is None:
                tok = (Axis(block_size, token_stride if token_stride is not None else k.token[0].stride),)
            ch = k.channel
            if channel_stride is not None or width != k.width:
                ch = (Axis(width, channel_stride if channel_stride is not None else k.channel[0].stride),)
            padded = 0 if width != k.width else new.padded_width
            kinds.append(dataclasses.replace(new, token=tok, channel=ch, padded_width=padded))
        return dataclasses.replace(self, kinds=tuple(kinds), **changes)

    # ---- derived -------------------------------------------------------------------------------

    @property
    def num_slots(self) -> int:
        """Number of token slots: ``num_blocks * block_size``."""
        return self.num_blocks * self.block_size

    @property
    def num_planes(self) -> int:
        """``len(kinds) * num_layers``."""
        return len(self.kinds) * self.num_layers

    def plane_kind(self, plane: int) -> PlaneKind:
        """The kind of plane ``plane`` (``plane // num_layers``)."""
        return self.kinds[plane // self.num_layers]

    @cached_property
    def chunk_format(self) -> ChunkFormat:
        """Host chunk format this layout gathers into and scatters from.

        Built once per layout object (~3 us) and kept in the instance ``__dict__``, outside the
        dataclass fields: equality, hashing and repr do not see it, and a copy made by
        :func:`dataclasses.replace` (or :meth:`replace_geometry`) builds its own."""
        return ChunkFormat(
            self.num_layers,
            tuple(ChunkSection(k.name, k.hidden, k.dtype, k.element_size) for k in self.kinds),
        )

    def contiguous_run(self) -> int:
        """Shortest of the kinds' :meth:`PlaneKind.contiguous_run` (elements)."""
        return min(k.contiguous_run() for k in self.kinds)

    def describe(self) -> str:
        """One line for logs and ``lmcache-core info``."""
        kinds = " ".join(k.describe() for k in self.kinds)
        return (
            f"{self.kind}: layers={self.num_layers} blocks={self.num_blocks} "
            f"block_size={self.block_size} tensors={self.num_tensors} kinds: {kinds}"
        )


@dataclass(frozen=True)
class KVCacheSpec:
    """A model's whole KV cache: one :class:`KVLayout` per layer group.

    Most models have one group. Models whose layers differ in block size or shape
    (DeepSeek-V4 style sliding/compressed groups) have several; each group has its own engine
    tensors and its own slot mapping, and a stored chunk holds every group's rows.
    """

    groups: tuple[KVLayout, ...]

    def __post_init__(self) -> None:
        if not self.groups:
            raise ValueError("groups: expected at least one KVLayout, given none")

    @property
    def tag(self) -> str:
        """Stable text naming the chunk formats of all groups (used in cache keys)."""
        return "+".join(g.chunk_format.tag for g in self.groups)

    def chunk_nbytes(self, num_tokens: int) -> int:
        """Bytes of one stored chunk of ``num_tokens`` tokens across all groups."""
        return sum(g.chunk_format.nbytes(num_tokens) for g in self.groups)
