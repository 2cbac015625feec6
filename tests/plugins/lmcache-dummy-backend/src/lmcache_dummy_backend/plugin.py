"""Kernels of the test-only ``dummy`` backend: vllm_flash_nhd gather and scatter, one token at a time.

Deliberately written independently of the reference backend (a per-token loop over the engine
tensors' own shapes instead of the layout's plane strides), so that a test comparing the two
compares two implementations. Every call is counted in :data:`CALLS`, which lets tests prove where
the core routed a call.

Engine tensors, per layer: ``[2, num_blocks, block_size, num_kv_heads, head_size]`` (K, V first);
chunk: ``[2, num_layers, num_tokens, num_kv_heads * head_size]``.

May assume: the core validated every argument and routes only layouts in
:func:`lmcache_capabilities`. Must not: do anything at import time beyond importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.plugin_api import API_VERSION, Capabilities

#: Number of kernel calls this backend served, by hook.
CALLS: dict[str, int] = {"gather": 0, "scatter": 0}

_LAYOUT = "vllm_flash_nhd"
_SAME_WIDTH_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Same-shape integer view, so copies are bit-exact for every float dtype (fp8 and NaNs too)."""
    return t.view(_SAME_WIDTH_INT[t.element_size()])


def _check_kind(layout: KVLayout) -> None:
    if layout.kind != _LAYOUT:
        raise ValueError(f"layout: the dummy backend moves only {_LAYOUT}, given {layout.kind}")


def _live_tokens(slot_mapping: torch.Tensor, skip_prefix: int, block_size: int):
    """Yield ``(token, block, position_in_block)`` for every token that moves."""
    for token, slot in enumerate(slot_mapping.tolist()):
        if token >= skip_prefix and slot >= 0:
            block, pos = divmod(slot, block_size)
            yield token, block, pos


@hookimpl
def lmcache_api_version() -> tuple[int, int]:
    return API_VERSION


@hookimpl
def lmcache_capabilities() -> Capabilities:
    return Capabilities(
        layouts=frozenset({_LAYOUT}), dtypes=frozenset({"*"}), status="test-only: per-token loop, host memory"
    )


@hookimpl
def lmcache_gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool:
    _check_kind(layout)
    CALLS["gather"] += 1
    planes = [_bits(kv) for kv in kv_caches]  # per layer [2, num_blocks, block_size, heads, head_size]
    dst = _bits(out)  # [2, num_layers, num_tokens, hidden]
    for token, block, pos in _live_tokens(slot_mapping, skip_prefix, kv_caches[0].shape[2]):
        for layer, kv in enumerate(planes):
            dst[:, layer, token].copy_(kv[:, block, pos].reshape(2, -1))
    return True


@hookimpl
def lmcache_scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int,
    stream: int,
) -> bool:
    _check_kind(layout)
    CALLS["scatter"] += 1
    planes = [_bits(kv) for kv in kv_caches]
    rows = _bits(src)
    heads, head_size = kv_caches[0].shape[3], kv_caches[0].shape[4]
    for token, block, pos in _live_tokens(slot_mapping, skip_prefix, kv_caches[0].shape[2]):
        for layer, kv in enumerate(planes):
            kv[:, block, pos].copy_(rows[:, layer, token].reshape(2, heads, head_size))
    return True
