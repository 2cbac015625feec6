"""Paged KV layouts described as named logical axes with strides.

Every paged KV format that engines use is one instance of the same description:

* logical axes ``kv`` (K and V, or one latent for MLA), ``layer``, ``block``, ``token`` (position
  inside a block), ``head`` and ``channel`` (position inside a head);
* the ``(kv, layer)`` pairs ("planes") each live at an element offset inside one of the engine's
  tensors;
* inside a plane, an element sits at
  ``block * block_stride + token * token_stride + head * head_stride + channel * channel_stride``.

A slot is ``block * block_size + token``. One kernel walks these strides for every layout and
copies the longest contiguous run (:meth:`KVLayout.contiguous_run`); there is no per-format code
path. Strides are read from the engine's tensors, so a permuted view (HND memory behind an NHD
shape) is described correctly without a special case.

This module imports nothing heavy: it runs in the core before torch is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Logical axis names, in the order the host chunk format uses.
LOGICAL_AXES = ("kv", "layer", "block", "token", "head", "channel")


def dtype_name(dtype: object) -> str:
    """Torch's name of a dtype without the ``torch.`` prefix (``torch.bfloat16`` -> ``"bfloat16"``):
    the form :attr:`KVLayout.dtype`, :class:`lmcache_core.plugin_api.Capabilities` and messages use."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class ChunkFormat:
    """Shape of a contiguous KV chunk in host memory.

    The chunk tensor is ``[num_kv, num_layers, num_tokens, hidden]`` where
    ``hidden = num_kv_heads * head_size``; ``num_kv`` is 2 (K, V) or 1 (MLA latent,
    ``[1, num_layers, num_tokens, latent_dim]``). Rows are ``hidden`` elements of ``dtype``.
    """

    num_kv: int
    num_layers: int
    hidden: int
    dtype: str
    element_size: int

    def shape(self, num_tokens: int) -> tuple[int, int, int, int]:
        """``[num_kv, num_layers, num_tokens, hidden]`` for ``num_tokens`` tokens."""
        return (self.num_kv, self.num_layers, num_tokens, self.hidden)

    def nbytes(self, num_tokens: int) -> int:
        """Bytes of a chunk holding ``num_tokens`` tokens."""
        return self.num_kv * self.num_layers * num_tokens * self.hidden * self.element_size

    @property
    def tag(self) -> str:
        """Stable text that names this format inside cache keys, e.g. ``kv2.L32.h1024.bfloat16``."""
        return f"kv{self.num_kv}.L{self.num_layers}.h{self.hidden}.{self.dtype}"


@dataclass(frozen=True)
class KVLayout:
    """One group of layers of an engine's paged KV cache, bound to concrete tensors' geometry.

    Attributes are in elements (not bytes) unless named ``*_bytes``.

    ``plane_tensor[p]`` and ``plane_offset[p]`` locate plane ``p = kv * num_layers + layer``:
    the index of the engine tensor holding it and the element offset of
    ``(block=0, token=0, head=0, channel=0)`` from that tensor's first element.
    """

    kind: str
    num_kv: int
    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_size: int
    dtype: str
    element_size: int
    num_tensors: int
    tensor_shape: tuple[int, ...]
    tensor_stride: tuple[int, ...]
    plane_tensor: tuple[int, ...]
    plane_offset: tuple[int, ...]
    block_stride: int
    token_stride: int
    head_stride: int
    channel_stride: int
    extra: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        planes = self.num_kv * self.num_layers
        if len(self.plane_tensor) != planes or len(self.plane_offset) != planes:
            raise ValueError(
                f"plane_tensor/plane_offset: expected {planes} entries (num_kv * num_layers), "
                f"given {len(self.plane_tensor)} and {len(self.plane_offset)}"
            )
        if self.num_kv not in (1, 2):
            raise ValueError(f"num_kv: expected 1 (MLA) or 2 (K and V), given {self.num_kv}")

    @property
    def num_slots(self) -> int:
        """Number of token slots: ``num_blocks * block_size``."""
        return self.num_blocks * self.block_size

    @property
    def hidden(self) -> int:
        """Elements per token per plane: ``num_kv_heads * head_size``."""
        return self.num_kv_heads * self.head_size

    @property
    def chunk_format(self) -> ChunkFormat:
        """Host chunk format this layout gathers into and scatters from."""
        return ChunkFormat(self.num_kv, self.num_layers, self.hidden, self.dtype, self.element_size)

    @property
    def strides(self) -> tuple[int, int, int, int]:
        """``(block, token, head, channel)`` strides in elements."""
        return (self.block_stride, self.token_stride, self.head_stride, self.channel_stride)

    def contiguous_run(self) -> int:
        """Longest run of elements of one token's row that is contiguous in the engine's memory.

        ``hidden`` when heads are adjacent (NHD-like), ``head_size`` when they are not (HND-like),
        1 when the channel axis itself is strided.
        """
        if self.channel_stride != 1:
            return 1
        if self.head_stride == self.head_size or self.num_kv_heads == 1:
            return self.hidden
        return self.head_size

    def describe(self) -> str:
        """One line for logs and ``lmcache-core info``."""
        return (
            f"{self.kind}: kv={self.num_kv} layers={self.num_layers} blocks={self.num_blocks} "
            f"block_size={self.block_size} heads={self.num_kv_heads} head_size={self.head_size} "
            f"dtype={self.dtype} strides(block,token,head,channel)={self.strides} "
            f"run={self.contiguous_run()}"
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
