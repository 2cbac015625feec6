"""Python wrapper of the compiled host kernels: torch tensors in, raw pointers to ``lmcache_arm._C``.

Shapes use named axes. For a layer group described by ``layout``
(:class:`lmcache_core.layout.KVLayout`):

* ``kv_caches``: the engine's tensors in host memory, ``layout.num_tensors`` of them, e.g.
  ``[2, num_blocks, block_size, num_kv_heads, head_size]`` per layer for ``vllm_flash_nhd`` (any
  layout of :data:`lmcache_core.layout_registry.LAYOUT_KINDS`, permuted views included);
* ``slot_mapping``: int64 ``[num_tokens]`` on the CPU, chunk token -> slot
  (``block * block_size + token``), ``-1`` = skip the token;
* ``out`` / ``src``: the contiguous chunk, any dtype, ``layout.chunk_format.nbytes(num_tokens)``
  bytes: one section ``[num_layers, num_tokens, hidden_k]`` per plane kind ``k`` of
  ``layout.kinds`` (``hidden_k = heads_k * width_k``, real channels only), back to back; for
  layouts whose kinds agree that is ``[num_kv, num_layers, num_tokens, hidden]``.

The extension never links libtorch: this module passes the core's
:func:`lmcache_core.native_args.native_layout` (``data_ptr()`` addresses, the bytes each tensor's
storage holds from that address so native code can bound every write, the plane table and
each plane kind's geometry: heads, width, element size, block and head strides, split token and
channel axes; cached per layout and tensor set), the slot mapping's and the chunk's addresses. The copy runs with the
GIL released on ``num_threads`` OpenMP threads (default ``torch.get_num_threads()``).

May assume: torch is importable. Must not at import time: load anything but torch, the core's
layout and native-arguments modules and the extension.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from lmcache_arm import _C
from lmcache_core.layout import KVLayout
from lmcache_core.native_args import native_layout


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
) -> None:
    # What memory safety needs, in Python: the integers native_layout hands over, host memory, a
    # contiguous chunk, int64 slots. Native code checks every extent and slot (kv_checks.h).
    args = native_layout(layout, kv_caches)
    if args.device is None or args.device.type != "cpu":
        i = next(j for j, d in enumerate(args.devices) if d.type != "cpu")
        raise ValueError(
            f"kv_caches[{i}]: expected a tensor in host memory (device cpu), given {args.devices[i]}"
        )
    if not isinstance(chunk, torch.Tensor) or not isinstance(slot_mapping, torch.Tensor):
        raise TypeError(
            f"{chunk_name} and slot_mapping: expected torch.Tensor, given "
            f"{type(chunk).__name__} and {type(slot_mapping).__name__}"
        )
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
        tensor_address=args.tensor_address,
        tensor_nbytes=args.tensor_nbytes,
        plane_tensor=args.plane_tensor,
        plane_offset=args.plane_offset,
        dims=args.dims,
        kinds=args.kinds,
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
) -> None:
    """Copy chunk tokens' KV rows from paged ``kv_caches`` into ``out`` (synchronously).

    ``out``: the contiguous chunk (see the module docstring); rows of tokens
    ``< skip_prefix`` and of ``-1`` slots stay as they were. Checks what memory safety needs
    (native code: every extent and live slot, ValueError before anything is written), not the
    user-facing dtype and shape checks: a caller who wants those goes through
    :class:`lmcache_core.backend.Backend`. ``stream`` is accepted and ignored (host copies are
    synchronous).
    """
    _transfer(_C.gather, "out", layout, kv_caches, slot_mapping, out, skip_prefix, num_threads, stream)


def scatter(
    layout: KVLayout,
    kv_caches: Sequence[torch.Tensor],
    slot_mapping: torch.Tensor,
    src: torch.Tensor,
    skip_prefix: int = 0,
    *,
    num_threads: int | None = None,
    stream: int = 0,
) -> None:
    """Copy chunk rows of ``src`` into paged ``kv_caches``: the inverse of :func:`gather`.

    ``src``: the contiguous chunk (see the module docstring). Slots of tokens
    ``< skip_prefix`` and ``-1`` slots are never written. Checks as :func:`gather`.
    """
    _transfer(_C.scatter, "src", layout, kv_caches, slot_mapping, src, skip_prefix, num_threads, stream)


def isa() -> str:
    """How NEON is provided in the loaded extension, e.g. ``"NEON via SIMDe on x86_64"``."""
    return str(_C.isa())
