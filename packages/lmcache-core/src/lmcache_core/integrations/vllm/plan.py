"""What the scheduler-side connector tells the workers each step (picklable, no vLLM types).

Token counts are positions in the prompt; ``block_ids`` are vLLM's block ids of the request's
first (only) KV cache group, in order, so token ``t`` lives in slot
``block_ids[t // block_size] * block_size + t % block_size``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


@dataclass
class LoadSpec:
    """Load ``token_ids`` (the prompt up to the end of the last chunk to load).

    ``skip``: tokens vLLM already holds (its own prefix cache), not written. ``matched_end``:
    tokens vLLM counts as computed after the load (``len(token_ids)``, or one less when the whole
    prompt was cached: vLLM must compute at least its last token). A load that stops early is
    reported through ``get_block_ids_with_load_errors`` for the blocks of
    ``[skip + loaded, matched_end)``. ``load_async``: run off the step by the worker's loader
    thread and reported in ``finished_recving`` when done (vLLM does not schedule the request
    meanwhile).
    """

    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    skip: int
    matched_end: int
    cache_salt: str | None
    load_async: bool = False


@dataclass
class StoreSpec:
    """Store ``token_ids`` (a prefix of the prompt ending on a chunk boundary, or the whole
    prompt; for a finished request, prompt plus generated tokens up to a chunk boundary); chunks
    already cached are only refreshed. ``finished``: the request has finished (vLLM holds its
    blocks for this store)."""

    req_id: str
    token_ids: list[int]
    block_ids: list[int]
    cache_salt: str | None
    finished: bool = False


@dataclass
class StepPlan:
    """One engine step: loads before the forward, stores after it, and the step's scheduled
    tokens (for the prefill-speed estimate)."""

    loads: list[LoadSpec] = field(default_factory=list)
    stores: list[StoreSpec] = field(default_factory=list)
    scheduled_tokens: int = 0


def slot_mapping(block_ids: list[int], num_tokens: int, block_size: int) -> np.ndarray:
    """int64 slots of tokens ``0 .. num_tokens-1``, ``[num_tokens]``."""
    import numpy as np

    need = -(-num_tokens // block_size)
    if need > len(block_ids):
        raise ValueError(
            f"block_ids: expected at least {need} blocks for {num_tokens} tokens of block size "
            f"{block_size}, given {len(block_ids)}"
        )
    blocks = np.asarray(block_ids[:need], dtype=np.int64)
    slots = blocks[:, None] * block_size + np.arange(block_size, dtype=np.int64)[None, :]
    return slots.reshape(-1)[:num_tokens]
