"""Python wrapper of the compiled host kernels: torch tensors in, raw pointers to ``lmcache_arm._C``.

Shapes use named axes. For a layer group described by ``layout``
(:class:`lmcache_core.layout.KVLayout`):

* ``kv_caches``: the engine's tensors in host memory, ``layout.num_tensors`` of them, e.g.
  ``[2, num_blocks, block_size, num_kv_heads, head_size]`` per layer for ``vllm_flash_nhd`` (any
  layout of :data:`lmcache_core.layout_registry.LAYOUT_KINDS`, permuted views included);
* ``slot_mapping``: int64 ``[num_tokens]`` on the CPU, chunk token -> slot
  (``block * block_size + token``), ``-1`` = skip the token;
* ``out`` / ``src``: contiguous ``[num_kv, num_layers, num_tokens, hidden]`` chunk of the KV
  dtype, ``hidden = num_kv_heads * head_size``; rows in bytes: ``hidden * element_size``.

The extension never links libtorch: this module passes ``data_ptr()`` addresses, the bytes each
tensor's storage holds from that address (so native code can bound every write), the plane table,
``(block, token, head, channel)`` strides in elements and the element size. The copy runs with the
GIL released on ``num_threads`` OpenMP threads (default ``torch.get_num_threads()``).

May assume: torch is importable. Must not at import time: load anything but torch, the core's
validation module and the extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmcache_arm import _C
from lmcache_core.layout import KVLayout
from lmcache_core.validation import check_transfer


def _transfer(
    fn: Callable[..., None],
    chunk_name: str,
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    chunk: torch.Tensor,
    skip_prefix: int,
    num_threads: int | None,
    stream: int,
    validate: bool,
) -> None:
    if validate:
        check_transfer(layout, kv_caches, slot_mapping, chunk_name, chunk, skip_prefix)
        for name, t in (*((f"kv_caches[{i}]", t) for i, t in enumerate(kv_caches)), (chunk_name, chunk)):
            if t.element_size() != layout.element_size:
                raise TypeError(
                    f"{name}: expected {layout.element_size}-byte elements ({layout.dtype}), given {t.dtype}"
                )
    # What memory safety needs, checked on every call (validate=False included): host memory, the
    # bytes each tensor's storage holds from its data pointer, a contiguous chunk, int64 slots.
    if not isinstance(kv_caches, (list, tuple)) or not kv_caches:
        raise TypeError(f"kv_caches: expected a non-empty list or tuple of tensors, given {kv_caches!r}")
    if not isinstance(chunk, torch.Tensor) or not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(
            f"{chunk_name} and slot_mapping: expected torch.Tensor, given "
            f"{type(chunk).__name__} and {type(slot_mapping).__name__}"
        )
    address, reach = [], []
    for t in kv_caches:
        if not t.is_cpu:
            i = next(j for j, x in enumerate(kv_caches) if x is t)
            raise ValueError(
                f"kv_caches[{i}]: expected a tensor in host memory (device cpu), given {t.device}"
            )
        address.append(t.data_ptr())
        reach.append(t.untyped_storage().nbytes() - t.storage_offset() * t.element_size())
    if not chunk.is_cpu or not slot_mapping.is_cpu:
        name, t = (chunk_name, chunk) if not chunk.is_cpu else ("slot_mapping", slot_mapping)
        raise ValueError(f"{name}: expected a tensor in host memory (device cpu), given {t.device}")
    if not chunk.is_contiguous():
        raise ValueError(f"{chunk_name}: expected a contiguous tensor, given strides {chunk.stride()}")
    if slot_mapping.dtype != torch.int64 or slot_mapping.dim() != 1:
        raise TypeError(
            f"slot_mapping: expected a 1-D int64 tensor, given {slot_mapping.dim()}-D {slot_mapping.dtype}"
        )
    if isinstance(skip_prefix, bool) or not isinstance(skip_prefix, int):
        raise TypeError(f"skip_prefix: expected int, given {type(skip_prefix).__name__}")
    if num_threads is None:
        num_threads = torch.get_num_threads()
    elif isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads: expected a positive int or None, given {num_threads!r}")
    slots = slot_mapping.contiguous()
    fn(
        tensor_address=address,
        tensor_nbytes=reach,
        plane_tensor=layout.plane_tensor,
        plane_offset=layout.plane_offset,
        dims=(
            layout.num_kv,
            layout.num_layers,
            layout.num_blocks,
            layout.block_size,
            layout.num_kv_heads,
            layout.head_size,
        ),
        strides=layout.strides,
        element_size=layout.element_size,
        slot_mapping=slots.data_ptr(),
        num_tokens=slots.numel(),
        chunk=chunk.data_ptr(),
        chunk_nbytes=chunk.numel() * chunk.element_size(),
        skip_prefix=skip_prefix,
        num_threads=num_threads,
        stream=stream,
    )


def gather(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    out: torch.Tensor,
    skip_prefix: int = 0,
    *,
    num_threads: int | None = None,
    stream: int = 0,
    validate: bool = True,
) -> None:
    """Copy chunk tokens' KV rows from paged ``kv_caches`` into ``out`` (synchronously).

    ``out``: contiguous ``[num_kv, num_layers, num_tokens, hidden]``; rows of tokens
    ``< skip_prefix`` and of ``-1`` slots stay as they were. ``validate=False`` skips the core's
    Python checks (the hook does, since :class:`lmcache_core.backend.Backend` ran them); native code
    checks slots and sizes regardless and raises ValueError before writing anything.
    ``stream`` is accepted and ignored (host copies are synchronous).
    """
    _transfer(
        _C.gather, "out", layout, kv_caches, slot_mapping, out, skip_prefix, num_threads, stream, validate
    )


def scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int = 0,
    *,
    num_threads: int | None = None,
    stream: int = 0,
    validate: bool = True,
) -> None:
    """Copy chunk rows of ``src`` into paged ``kv_caches``: the inverse of :func:`gather`.

    ``src``: contiguous ``[num_kv, num_layers, num_tokens, hidden]``. Slots of tokens
    ``< skip_prefix`` and ``-1`` slots are never written.
    """
    _transfer(
        _C.scatter, "src", layout, kv_caches, slot_mapping, src, skip_prefix, num_threads, stream, validate
    )


def isa() -> str:
    """How NEON is provided in the loaded extension, e.g. ``"NEON via SIMDe on x86_64"``."""
    return str(_C.isa())
