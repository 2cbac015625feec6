"""A Pallas TPU kernel for the row copies: the TPU-native analogue of lmcache-gpu's CUDA kernel.

For the ``tpu_inference`` layout (per layer ``[num_pages, page_size, G, p, Dp]``), each chunk row
is one token's whole ``[G, p, Dp]`` row, moved by a DMA (``pltpu.make_async_copy``) between the
KV in HBM and a staging array, driven by the block table (block ids and in-block positions,
scalar-prefetched into SMEM). Gather: KV rows -> staging ``[n, G, p, Dp]``; scatter: staging ->
KV rows, the KV aliased to the output (``input_output_aliases``) so the update is in place
within the donated buffer. Rows whose block id is ``num_pages`` are padding and are skipped.

Behind ``LMCACHE_TPU_KERNEL=pallas`` until measured on a TPU. Off a TPU it runs in Pallas'
interpreter (``interpret=True``): correct, about 1-2 MB/s, for tests on small shapes.
"""

from __future__ import annotations

from typing import Any

import jax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

#: Layout kinds the kernel moves (the others take the XLA path).
LAYOUTS = ("tpu_inference",)


def interpret_default() -> bool:
    """True off a TPU: the kernel then runs in Pallas' interpreter."""
    return jax.default_backend() != "tpu"


def _gather_kernel(blk_ref: Any, pos_ref: Any, kv_ref: Any, out_ref: Any, sem: Any) -> None:
    num_pages = kv_ref.shape[0]

    def body(i: Any, carry: Any) -> Any:
        b = blk_ref[i]

        @pl.when(b < num_pages)
        def _copy() -> None:
            dma = pltpu.make_async_copy(kv_ref.at[b, pos_ref[i]], out_ref.at[i], sem)
            dma.start()
            dma.wait()

        return carry

    jax.lax.fori_loop(0, out_ref.shape[0], body, 0)


def _scatter_kernel(blk_ref: Any, pos_ref: Any, kv_ref: Any, rows_ref: Any, out_ref: Any, sem: Any) -> None:
    del kv_ref  # aliased to out_ref
    num_pages = out_ref.shape[0]

    def body(i: Any, carry: Any) -> Any:
        b = blk_ref[i]

        @pl.when(b < num_pages)
        def _copy() -> None:
            dma = pltpu.make_async_copy(rows_ref.at[i], out_ref.at[b, pos_ref[i]], sem)
            dma.start()
            dma.wait()

        return carry

    jax.lax.fori_loop(0, rows_ref.shape[0], body, 0)


def gather_rows(kv: Any, blk: Any, pos: Any, interpret: bool) -> Any:
    """``[n, G, p, Dp]``: row ``i`` is ``kv[blk[i], pos[i]]`` (padding rows undefined)."""
    n = blk.shape[0]
    return pl.pallas_call(
        _gather_kernel,
        out_shape=jax.ShapeDtypeStruct((n, *kv.shape[2:]), kv.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(1,),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=pl.BlockSpec(memory_space=pl.ANY),
            scratch_shapes=[pltpu.SemaphoreType.DMA(())],
        ),
        interpret=interpret,
    )(blk, pos, kv)


def scatter_rows(kv: Any, blk: Any, pos: Any, rows: Any, interpret: bool) -> Any:
    """``kv`` with ``kv[blk[i], pos[i]] = rows[i]`` for every non-padding row (``rows``:
    ``[n, G, p, Dp]``)."""
    return pl.pallas_call(
        _scatter_kernel,
        out_shape=jax.ShapeDtypeStruct(kv.shape, kv.dtype),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=2,
            grid=(1,),
            in_specs=[pl.BlockSpec(memory_space=pl.ANY), pl.BlockSpec(memory_space=pl.ANY)],
            out_specs=pl.BlockSpec(memory_space=pl.ANY),
            scratch_shapes=[pltpu.SemaphoreType.DMA(())],
        ),
        input_output_aliases={2: 0},
        interpret=interpret,
    )(blk, pos, kv, rows)
