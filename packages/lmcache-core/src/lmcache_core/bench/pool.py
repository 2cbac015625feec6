"""Benchmark shapes and the paged KV pool they run on: allocation, fill, slot mappings.

The pool is allocated in the engine's own layout through the layout registry and filled with a
pattern that never repeats at a block or layer boundary (period: a prime number of bytes), so a
kernel reading the wrong block, layer or head cannot match the reference by accident. Every page
is written, so later reads come from memory, not from the kernel's shared zero page.

Slot mappings pick random whole blocks and use consecutive slots inside each block, the way
engines allocate; successive calls draw blocks not used before (until the pool runs out), so a
timed repeat does not re-read what an earlier one left in cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from lmcache_core.layout import KVLayout

#: Pattern period in bytes: prime, so blocks, layers and heads (power-of-two sizes) all differ.
PATTERN_PERIOD = 1_048_573


@dataclass(frozen=True)
class ShapeSpec:
    """One benchmark case: engine layout kind and model geometry, and the chunk size in tokens."""

    name: str
    kind: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    dtype: str
    block_size: int
    num_tokens: int
    about: str

    @property
    def num_kv(self) -> int:
        """2 (K and V), or 1 for the MLA latent."""
        return 1 if self.kind == "mla" else 2

    @property
    def element_size(self) -> int:
        return {"bfloat16": 2, "float16": 2, "float32": 4, "float8_e4m3fn": 1, "float8_e5m2": 1}[self.dtype]

    @property
    def row_bytes(self) -> int:
        """Bytes of one token's row in one (kv, layer) plane: ``num_kv_heads * head_size`` elements."""
        return self.num_kv_heads * self.head_size * self.element_size

    @property
    def chunk_bytes(self) -> int:
        """Bytes of a chunk ``[num_kv, num_layers, num_tokens, hidden]``."""
        return self.num_kv * self.num_layers * self.num_tokens * self.row_bytes

    @property
    def block_bytes(self) -> int:
        """Bytes of one block across every layer and K/V."""
        return self.num_kv * self.num_layers * self.block_size * self.row_bytes

    @property
    def blocks_per_chunk(self) -> int:
        return math.ceil(self.num_tokens / self.block_size)

    def describe(self) -> str:
        heads = "latent" if self.kind == "mla" else f"{self.num_kv_heads} kv heads x"
        return (
            f"{self.kind}, {self.num_layers} layers x {heads} {self.head_size} {self.dtype}, "
            f"block {self.block_size}, {self.num_tokens}-token chunk = "
            f"{self.chunk_bytes / 2**20:.2f} MiB ({self.row_bytes} B rows)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.name,
            "layout": self.kind,
            "num_layers": self.num_layers,
            "num_kv_heads": self.num_kv_heads,
            "head_size": self.head_size,
            "dtype": self.dtype,
            "block_size": self.block_size,
            "num_tokens": self.num_tokens,
            "row_bytes": self.row_bytes,
            "chunk_bytes": self.chunk_bytes,
        }


SHAPES: dict[str, ShapeSpec] = {
    s.name: s
    for s in (
        ShapeSpec(
            "nhd",
            "vllm_flash_nhd",
            32,
            8,
            128,
            "bfloat16",
            16,
            256,
            "Llama-3-8B-like GQA on a GPU engine's NHD pages",
        ),
        ShapeSpec(
            "small_rows",
            "vllm_flash_nhd",
            32,
            1,
            128,
            "bfloat16",
            16,
            256,
            "one kv head: 256 B rows, the small-copy worst case",
        ),
        ShapeSpec(
            "hnd",
            "vllm_flash_hnd",
            32,
            8,
            128,
            "bfloat16",
            16,
            256,
            "the same model on HND pages: one contiguous run per head (256 B), heads a block apart",
        ),
        ShapeSpec("mla", "mla", 32, 1, 576, "bfloat16", 16, 256, "DeepSeek-style MLA latent (512 + 64 rope)"),
        ShapeSpec(
            "vllm_cpu_vec",
            "vllm_cpu",
            32,
            8,
            128,
            "bfloat16",
            128,
            256,
            "vLLM CPU vec kernel pages, true token rows: per head K transposed [head_size, block_size], "
            "then V rows",
        ),
        ShapeSpec(
            "vllm_cpu_amx",
            "vllm_cpu_amx",
            32,
            8,
            128,
            "bfloat16",
            128,
            256,
            "vLLM CPU amx kernel pages, true token rows: per head K and V in 16-wide VNNI tiles",
        ),
    )
}

#: ``--quick``: the same cases with 4 layers and 64-token chunks, for tests and smoke runs.
QUICK_LAYERS, QUICK_TOKENS = 4, 64


def quick(spec: ShapeSpec) -> ShapeSpec:
    """The same case, shrunk so a run takes well under a second."""
    return replace(spec, num_layers=QUICK_LAYERS, num_tokens=QUICK_TOKENS)


def get_shapes(names: list[str]) -> list[ShapeSpec]:
    """Look up shape names; ValueError lists the valid ones."""
    unknown = [n for n in names if n not in SHAPES]
    if unknown:
        raise ValueError(f"shapes: expected names from {sorted(SHAPES)}, given {unknown}")
    return [SHAPES[n] for n in names]


def flat_bytes(t: torch.Tensor) -> torch.Tensor:
    """uint8 ``[nbytes]`` view of a contiguous tensor's memory."""
    import torch

    if not t.is_contiguous():
        raise ValueError(f"tensor: expected a contiguous tensor, given strides {t.stride()}")
    return t.reshape(-1).view(torch.uint8)


def fill_pattern_(tensors: list[torch.Tensor], seed: int) -> None:
    """Write a random byte pattern of period :data:`PATTERN_PERIOD` across all ``tensors``.

    The phase continues from one tensor to the next, so equal-sized tensors hold different bytes.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    pattern = torch.randint(0, 256, (PATTERN_PERIOD,), dtype=torch.uint8, generator=gen)
    twice = torch.cat([pattern, pattern]).to(tensors[0].device)
    phase = 0
    for t in tensors:
        flat = flat_bytes(t)
        n = flat.numel()
        for start in range(0, n, PATTERN_PERIOD):
            length = min(PATTERN_PERIOD, n - start)
            flat[start : start + length].copy_(twice[phase : phase + length])
        phase = (phase + n) % PATTERN_PERIOD


class BlockSampler:
    """Random blocks without replacement; starts a fresh permutation when the pool is used up.

    ``reused`` turns True once a block may be handed out a second time (the pool was too small
    for every timed call to get fresh blocks).
    """

    def __init__(self, num_blocks: int, seed: int) -> None:
        import torch

        self.num_blocks = num_blocks
        self._gen = torch.Generator().manual_seed(seed)
        self._order: list[int] = []
        self._permutations = 0

    @property
    def reused(self) -> bool:
        return self._permutations > 1

    def take(self, count: int) -> list[int]:
        """``count`` distinct block indices."""
        import torch

        if count > self.num_blocks:
            raise ValueError(f"count: expected at most {self.num_blocks} blocks, given {count}")
        if len(self._order) < count:
            self._order = torch.randperm(self.num_blocks, generator=self._gen).tolist()
            self._permutations += 1
        taken, self._order = self._order[:count], self._order[count:]
        return taken


def slot_mapping(blocks: list[int], block_size: int, num_tokens: int) -> torch.Tensor:
    """int64 ``[num_tokens]``: consecutive slots inside each of ``blocks``, block after block."""
    import torch

    b = torch.tensor(blocks, dtype=torch.int64)
    slots = (b[:, None] * block_size + torch.arange(block_size, dtype=torch.int64)).reshape(-1)
    return slots[:num_tokens].contiguous()


@dataclass
class KVPool:
    """An engine-layout KV pool on ``device``: the tensors, their layout, and a block sampler."""

    spec: ShapeSpec
    tensors: list[torch.Tensor]
    layout: KVLayout
    sampler: BlockSampler

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    def next_mapping(self) -> torch.Tensor:
        """Slot mapping of one chunk over blocks not used by earlier mappings (while they last)."""
        blocks = self.sampler.take(self.spec.blocks_per_chunk)
        return slot_mapping(blocks, self.spec.block_size, self.spec.num_tokens)


def build_pool(spec: ShapeSpec, num_blocks: int, device: str, seed: int) -> KVPool:
    """Allocate ``num_blocks`` blocks of ``spec``'s layout on ``device`` and fill every byte."""
    import torch

    from lmcache_core.layout_registry import allocate_example, detect_layout

    if num_blocks < spec.blocks_per_chunk:
        raise ValueError(f"num_blocks: expected >= {spec.blocks_per_chunk} (one chunk), given {num_blocks}")
    tensors, hints = allocate_example(
        spec.kind,
        num_layers=spec.num_layers,
        num_blocks=num_blocks,
        block_size=spec.block_size,
        num_kv_heads=spec.num_kv_heads,
        head_size=spec.head_size,
        dtype=getattr(torch, spec.dtype),
        device=device,
    )
    fill_pattern_(tensors, seed)
    return KVPool(spec, tensors, detect_layout(tensors, hints), BlockSampler(num_blocks, seed + 1))
