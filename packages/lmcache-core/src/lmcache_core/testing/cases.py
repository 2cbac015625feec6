"""Seeded random conformance cases: engine tensors of every layout kind, slot mappings, poison.

A :class:`Case` is a plain description (kind, shape, dtype, slot mapping, skip_prefix, data
seed); :func:`make_cases` draws them from one integer seed, so a failing case is reproduced by
rerunning with the same seed. Categorical features (dtype, block size, head size, slot pattern,
skip mode) rotate through their lists from a seeded starting point, so ``count >= 6`` cases per
layout cover every value; sizes inside a case are drawn at random.

Slot patterns (``Case.pattern``):

* ``runs``: consecutive slots inside randomly chosen blocks, as engines hand out chunks;
* ``distinct``: random distinct slots anywhere;
* ``holes``: ``runs`` with about a third of the tokens set to ``-1``;
* ``all_skipped``: every slot is ``-1``;
* ``repeats``: random slots drawn with replacement (gather only; scatter tests drop repeats).

When ``skip_prefix > 0`` about half of the skipped tokens' slots are out of range on purpose
(``num_slots``, ``-7``, ``2**40``, ...): the contract says a backend never reads or writes slots
of skipped tokens, and the core's validation checks only the live ones.

Everything here builds CPU tensors from a ``torch.Generator``; the suite copies them to the
device under test, so a case's bytes do not depend on the device.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import torch

from lmcache_core.layout import ChunkFormat, KVLayout
from lmcache_core.layout_registry import (
    LAYOUT_KINDS,
    LayoutHints,
    allocate_example,
    detect_layout,
    flatten_kv_caches,
)

#: Byte every output is filled with before a call; rows a call must not write keep it.
POISON_BYTE = 0xA5

SLOT_PATTERNS = ("runs", "distinct", "holes", "all_skipped", "repeats")
SKIP_MODES = ("zero", "random", "all")
_SKIP_ROTATION = ("zero", "random", "zero", "all", "random")  # most cases move some tokens

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_TOKENS = 48
T = TypeVar("T")


def float_dtypes() -> tuple[torch.dtype, ...]:
    """KV dtypes the suite covers: fp16, bf16, fp32, and both fp8 formats when torch has them."""
    names = ("float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2")
    return tuple(getattr(torch, n) for n in names if hasattr(torch, n))


def bits(t: torch.Tensor) -> torch.Tensor:
    """View ``t`` as the signed integer dtype of the same width (uint8 for 1 byte); same strides."""
    return t.view(_INT_OF_SIZE[t.element_size()])


def poison_value(element_size: int) -> int:
    """The integer whose bytes are all :data:`POISON_BYTE`, in :func:`bits`' dtype of that width."""
    return int.from_bytes(bytes([POISON_BYTE]) * element_size, "little", signed=element_size > 1)


def poison_(t: torch.Tensor) -> torch.Tensor:
    """Fill every element of ``t`` with the poison bytes, in place; returns ``t``."""
    bits(t).fill_(poison_value(t.element_size()))
    return t


def random_bits_(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill ``t`` (CPU, any strides) with random bytes, in place: NaN and Inf payloads included."""
    raw = torch.randint(0, 256, (*t.shape, t.element_size()), dtype=torch.uint8, generator=generator)
    bits(t).copy_(raw.view(_INT_OF_SIZE[t.element_size()]).squeeze(-1))
    return t


@dataclass(frozen=True)
class LayoutVariant:
    """A layout kind to test, with ``physical_hnd``: HND memory behind vLLM's NHD shape;
    ``variant``: a registry variant (:attr:`LayoutKind.variants`); ``unequal_v``: V (or the
    second kind) narrower than K, as Ascend's ``head_size_v`` and MLA's rope."""

    kind: str
    physical_hnd: bool = False
    variant: str | None = None
    unequal_v: bool = False

    @property
    def name(self) -> str:
        name = f"{self.kind}+hnd_memory" if self.physical_hnd else self.kind
        name += f"+{self.variant}" if self.variant else ""
        return name + ("+unequal_v" if self.unequal_v else "")


#: Every registry kind and each of its variants, plus vllm_flash_nhd as a permuted view of HND
#: memory and Ascend K/V of unequal widths.
LAYOUT_VARIANTS: tuple[LayoutVariant, ...] = (
    *(LayoutVariant(k) for k in LAYOUT_KINDS),
    *(LayoutVariant(k, variant=v) for k, entry in LAYOUT_KINDS.items() for v in entry.variants),
    LayoutVariant("vllm_flash_nhd", physical_hnd=True),
    LayoutVariant("vllm_ascend", unequal_v=True),
)

#: Kinds handed over as a tuple of tensors per layer.
TUPLE_KINDS = frozenset({"vllm_ascend", "vllm_ascend_mla"})
#: Kinds whose engines hold only some dtypes.
_KIND_DTYPES = {"vllm_cpu_bfmmla": ("bfloat16",)}
#: Kinds whose tiles need block and head sizes of a multiple: (block sizes, head sizes).
_KIND_SIZES = {"vllm_cpu_amx": ((16, 32), (16, 32)), "vllm_cpu_bfmmla": ((8, 16), (4, 8, 12))}


@dataclass(frozen=True, repr=False)
class Case:
    """One transfer: engine tensors of ``kind`` and a chunk of ``len(slot_mapping)`` tokens.

    ``slot_mapping[t]`` is the slot (``block * block_size + token``) of chunk token ``t``, -1 to
    skip it. ``data_seed`` seeds the random bytes of the KV and chunk tensors.
    """

    kind: str
    physical_hnd: bool
    num_layers: int
    num_blocks: int
    block_size: int
    num_kv_heads: int
    head_size: int
    dtype: torch.dtype
    slot_mapping: tuple[int, ...]
    skip_prefix: int
    pattern: str
    data_seed: int
    label: str
    variant: str | None = None
    head_size_v: int | None = None

    def __repr__(self) -> str:  # short: pytest prints it in tracebacks; describe() has the rest
        return f"Case({self.id!r})"

    @property
    def num_tokens(self) -> int:
        return len(self.slot_mapping)

    @property
    def num_slots(self) -> int:
        return self.num_blocks * self.block_size

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def id(self) -> str:
        """Short test id, e.g. ``vllm_flash_nhd-3-bfloat16``."""
        return f"{self.label}-{self.dtype_name}"

    def describe(self) -> str:
        """Everything needed to rebuild the case by hand, for failure messages."""
        return (
            f"{self.id}: kind={self.kind} physical_hnd={self.physical_hnd} variant={self.variant} "
            f"head_size_v={self.head_size_v} layers={self.num_layers} "
            f"blocks={self.num_blocks} block_size={self.block_size} heads={self.num_kv_heads} "
            f"head_size={self.head_size} dtype={self.dtype_name} tokens={self.num_tokens} "
            f"pattern={self.pattern} skip_prefix={self.skip_prefix} slots={list(self.slot_mapping)}"
        )

    def live_tokens(self) -> list[int]:
        """Chunk tokens that move: ``t >= skip_prefix`` with ``slot_mapping[t] != -1``."""
        return [t for t in range(self.skip_prefix, self.num_tokens) if self.slot_mapping[t] != -1]

    def generator(self, salt: int) -> torch.Generator:
        """A CPU generator for this case's data; ``salt`` separates the tensors of one test."""
        return torch.Generator().manual_seed(self.data_seed * 1009 + salt)

    def hints(self) -> LayoutHints:
        """Hints that detect this case's tensors as ``kind`` (what an engine connector passes)."""
        return LayoutHints(
            kind=self.kind,
            num_kv_heads=self.num_kv_heads,
            head_size=self.head_size,
            block_size=self.block_size,
            num_layers=self.num_layers,
            head_size_v=self.head_size_v,
            variant=self.variant,
        )

    def allocate(self, device: str | torch.device = "cpu") -> tuple[list[Any], LayoutHints]:
        """Uninitialised engine tensors (as the engine hands them over: a tuple per layer for
        :data:`TUPLE_KINDS`) and detection hints of this case on ``device``."""
        return allocate_example(
            self.kind, num_layers=self.num_layers, num_blocks=self.num_blocks,
            block_size=self.block_size, num_kv_heads=self.num_kv_heads, head_size=self.head_size,
            dtype=self.dtype, device=device, physical_hnd=self.physical_hnd,
            head_size_v=self.head_size_v, variant=self.variant,
        )  # fmt: skip

    def nest(self, flat: Sequence[torch.Tensor]) -> list[Any]:
        """The flat tensor list regrouped as the engine hands it over (tuples per layer)."""
        if self.kind not in TUPLE_KINDS:
            return list(flat)
        n = len(flat) // self.num_layers
        return [tuple(flat[i : i + n]) for i in range(0, len(flat), n)]

    def detect(self, flat: Sequence[torch.Tensor]) -> KVLayout:
        """The layout of this case's flat engine tensors ``flat`` (on any device)."""
        return detect_layout(self.nest(flat), self.hints())

    def random_kv(self, salt: int = 1) -> tuple[list[torch.Tensor], KVLayout]:
        """CPU engine tensors (the flat list backends take) full of random bits, and their layout."""
        tensors, hints = self.allocate("cpu")
        flat = flatten_kv_caches(tensors)
        gen = self.generator(salt)
        for t in flat:
            random_bits_(t, gen)
        return flat, detect_layout(tensors, hints)

    def poisoned_kv(self) -> tuple[list[torch.Tensor], KVLayout]:
        """CPU engine tensors (the flat list) full of the poison bytes, and their layout."""
        tensors, hints = self.allocate("cpu")
        flat = flatten_kv_caches(tensors)
        for t in flat:
            poison_(t)
        return flat, detect_layout(tensors, hints)

    def chunk_format(self) -> ChunkFormat:
        """This case's host chunk format (from a metadata-only allocation)."""
        tensors, hints = self.allocate("meta")
        return detect_layout(tensors, hints).chunk_format

    def chunk_shape(self) -> tuple[int, ...]:
        """The host chunk's shape: ``[num_kv, num_layers, num_tokens, hidden]`` when its sections
        are alike, else ``[nbytes]`` (uint8 bytes, the sections back to back)."""
        fmt = self.chunk_format()
        return fmt.shape(self.num_tokens) if fmt.is_uniform else (fmt.nbytes(self.num_tokens),)

    @property
    def chunk_dtype(self) -> torch.dtype:
        """The chunk's dtype: the KV's for a 4-D chunk, uint8 for bytes."""
        return self.dtype if self.chunk_format().is_uniform else torch.uint8

    def chunk_nbytes(self) -> int:
        return self.chunk_format().nbytes(self.num_tokens)

    def random_chunk(self, salt: int = 2) -> torch.Tensor:
        """A CPU chunk (:meth:`chunk_shape`) of random bits."""
        return random_bits_(torch.empty(self.chunk_shape(), dtype=self.chunk_dtype), self.generator(salt))

    def slot_tensor(self, *, unique: bool = False) -> torch.Tensor:
        """int64 ``[num_tokens]`` slot mapping; ``unique`` turns repeats of a live slot into -1."""
        slots = list(self.slot_mapping)
        if unique:
            seen: set[int] = set()
            for t in range(self.skip_prefix, len(slots)):
                if slots[t] in seen:
                    slots[t] = -1
                elif slots[t] != -1:
                    seen.add(slots[t])
        return torch.tensor(slots, dtype=torch.int64)


class _Rotation:
    """Categorical features cycle from a seeded start: ``len(values)`` cases see every value."""

    def __init__(self, rng: random.Random) -> None:
        self._start = rng.randrange(1 << 30)

    def pick(self, values: Sequence[T], index: int) -> T:
        return values[(self._start + index) % len(values)]


def _slots(rng: random.Random, pattern: str, num_blocks: int, block_size: int, num_tokens: int) -> list[int]:
    """``num_tokens`` slots (``num_tokens <= num_blocks * block_size``) following ``pattern``."""
    num_slots = num_blocks * block_size
    if pattern == "distinct":
        return rng.sample(range(num_slots), num_tokens)
    if pattern == "repeats":
        return [rng.randrange(num_slots) for _ in range(num_tokens)]
    if pattern == "all_skipped":
        return [-1] * num_tokens
    # runs / holes: the chunk starts somewhere inside its first block, then fills whole blocks,
    # the blocks in random order, as a paged allocator hands them out
    start = rng.randrange(min(block_size, num_slots - num_tokens + 1))
    slots: list[int] = []
    for block in rng.sample(range(num_blocks), num_blocks):
        take = min(block_size - start, num_tokens - len(slots))
        slots.extend(block * block_size + start + i for i in range(take))
        start = 0
        if len(slots) == num_tokens:
            break
    if pattern == "holes":
        slots = [-1 if rng.random() < 0.35 else s for s in slots]
    return slots


def _skip(rng: random.Random, mode: str, slots: list[int], num_slots: int) -> int:
    """skip_prefix for ``mode``; fills some skipped tokens' slots with out-of-range values."""
    n = len(slots)
    skip = 0 if mode == "zero" else rng.randint(1, n - 1) if mode == "random" and n > 1 else n
    garbage = (num_slots, num_slots + 7, -7, 2**40, -(2**40))
    for t in range(skip):  # never read: a backend that touches these goes out of bounds
        if rng.random() < 0.5:
            slots[t] = rng.choice(garbage)
    return skip


def _seed_for(seed: int, text: str) -> int:
    return zlib.crc32(f"{seed}:{text}".encode())


class _VariantDraw:
    """Draws the cases of one layout variant from one seed."""

    def __init__(self, seed: int, variant: LayoutVariant, dtypes: Sequence[torch.dtype]) -> None:
        self.seed = seed
        self.variant = variant
        self.dtypes = tuple(dtypes)
        self.rng = random.Random(_seed_for(seed, variant.name))
        names = ("dtype", "pattern", "skip", "heads", "head_size", "block_size")
        self.rot = {n: _Rotation(self.rng) for n in names}

    def case(
        self,
        index: int,
        label: str,
        *,
        num_tokens: int | None = None,
        skip_mode: str | None = None,
        avoid_block_size: int | None = None,
    ) -> Case:
        rng, rot, kind = self.rng, self.rot, LAYOUT_KINDS[self.variant.kind]
        dtypes = [
            d
            for d in self.dtypes
            if str(d).removeprefix("torch.") in _KIND_DTYPES.get(kind.name, (str(d)[6:],))
        ]
        dtype = rot["dtype"].pick(dtypes or self.dtypes, index)
        pattern = rot["pattern"].pick(SLOT_PATTERNS, index)
        skip_mode = skip_mode or rot["skip"].pick(_SKIP_ROTATION, index)
        if kind.mla or self.variant.variant == "mla":
            heads, head_size = 1, rot["head_size"].pick((576, 1, 3, 65, 576, 96), index)
        else:
            heads = rot["heads"].pick((2, 1, 4, 3), index)
            head_size = rot["head_size"].pick((1, 3, 80, 64, 65, 8), index)
        block_sizes, head_sizes = _KIND_SIZES.get(kind.name, ((1, 2, 3, 4, 16), None))
        if head_sizes is not None:
            head_size = rot["head_size"].pick(head_sizes, index)
        sizes = [b for b in block_sizes if b != avoid_block_size] or list(block_sizes)
        block_size = 1 if self.variant.kind == "sglang" else rot["block_size"].pick(sizes, index)
        head_size_v = rot["head_size"].pick((8, 1, 40, 3), index) if self.variant.unequal_v else None
        num_blocks = rng.randint(8, 40) if block_size == 1 else rng.randint(2, 6)
        if num_tokens is not None:  # a fixed chunk length: make room for it
            num_blocks = max(num_blocks, -(-num_tokens // block_size))
        limit = min(num_blocks * block_size, _MAX_TOKENS)
        n = num_tokens if num_tokens is not None else rng.randint(max(1, limit // 3), limit)
        slots = _slots(rng, pattern, num_blocks, block_size, n)
        skip = _skip(rng, skip_mode, slots, num_blocks * block_size)
        return Case(
            self.variant.kind,
            self.variant.physical_hnd,
            rng.randint(1, 3),
            num_blocks,
            block_size,
            heads,
            head_size,
            dtype,
            tuple(slots),
            skip,
            pattern,
            _seed_for(self.seed, label),
            label,
            self.variant.variant,
            head_size_v,
        )


def empty_case(variant: LayoutVariant) -> Case:
    """A small fp16 case of ``variant`` whose chunk has zero tokens."""
    kind = LAYOUT_KINDS[variant.kind]
    block_sizes, head_sizes = _KIND_SIZES.get(variant.kind, ((2,), (4,)))
    block_size = 1 if variant.kind == "sglang" else block_sizes[0]
    heads = 1 if kind.mla or variant.variant == "mla" else 2
    dtype = getattr(torch, _KIND_DTYPES.get(variant.kind, ("float16",))[0])
    return Case(
        variant.kind,
        variant.physical_hnd,
        2,
        3,
        block_size,
        heads,
        head_sizes[0],
        dtype,
        (),
        0,
        "empty",
        0,
        f"{variant.name}-empty",
        variant.variant,
        2 if variant.unequal_v else None,
    )


def make_cases(seed: int, count: int, variants: Sequence[LayoutVariant] = LAYOUT_VARIANTS) -> list[Case]:
    """``count`` cases per layout variant, all drawn from ``seed``."""
    cases: list[Case] = []
    for variant in variants:
        draw = _VariantDraw(seed, variant, float_dtypes())
        cases.extend(draw.case(i, f"{variant.name}-{i}") for i in range(count))
    return cases


def make_group_cases(seed: int, count: int) -> list[tuple[Case, Case]]:
    """``count`` two-group models: two different layouts with different block sizes.

    Both groups move the same chunk of ``num_tokens`` tokens with the same ``skip_prefix``, each
    through its own slot mapping (engines keep one per group), in one dtype as one model does.
    """
    rng = random.Random(_seed_for(seed, "groups"))
    dtypes = float_dtypes()
    out = []
    for i in range(count):
        dtype = dtypes[i % len(dtypes)]
        a, b = rng.sample([v for v in LAYOUT_VARIANTS if v.kind not in _KIND_DTYPES], 2)
        if a.kind == "sglang":  # sglang's block size is fixed at 1: let the other group avoid it
            a, b = b, a
        second = _VariantDraw(seed, b, [dtype]).case(i, f"groups-{i}-b")
        first = _VariantDraw(seed, a, [dtype]).case(
            i, f"groups-{i}-a", num_tokens=second.num_tokens, avoid_block_size=second.block_size
        )
        out.append(
            (
                first,
                replace(
                    second, slot_mapping=_reskip(second, first.skip_prefix), skip_prefix=first.skip_prefix
                ),
            )
        )
    return out


def _reskip(case: Case, skip_prefix: int) -> tuple[int, ...]:
    """``case``'s slots for a new ``skip_prefix``: live garbage (an old skipped slot) becomes -1."""
    return tuple(
        -1 if t >= skip_prefix and not -1 <= s < case.num_slots else s
        for t, s in enumerate(case.slot_mapping)
    )
