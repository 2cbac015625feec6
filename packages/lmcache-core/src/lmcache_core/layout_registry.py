"""Registry of the paged KV layouts engines use, each with a detector and an example allocator.

Every entry maps an engine's tensors onto the one :class:`~lmcache_core.layout.KVLayout`
description (plane kinds with their own geometry, strides read from the tensors). Shapes below
use named axes (``NB`` num_blocks, ``BS`` block_size, ``H`` num_kv_heads, ``D`` head_size,
``L`` num_layers, ``p`` packing = 32 / dtype bits):

=====================  ===========================================================================
kind                   engine tensors
=====================  ===========================================================================
``vllm_flash_nhd``     per layer ``[2, NB, BS, H, D]``
``vllm_flash_hnd``     per layer ``[2, NB, H, BS, D]``
``flashinfer``         per layer ``[NB, 2, BS, H, D]``
``vllm_cpu``           per layer ``[NB, H, BS, 2*D]``; each (block, head): a K region then a V region
``mla``                per layer ``[NB, BS, latent_dim]`` (no separate V)
``sglang``             ``2*L`` tensors ``[num_slots, H, D]``: K of every layer, then V
``trtllm``             one tensor ``[NB, L, 2, H, BS, D]``
``vllm_ascend``        per layer a tuple ``(K [NB, BS, H, D], V [NB, BS, H, Dv])``; each tensor may
                       start at a 2 MiB-aligned offset of its own buffer
``vllm_ascend_mla``    per layer ``(nope [NB, BS, 1, 512], rope [NB, BS, 1, 64])``, or with a third
                       ``indexer [NB, BS, 1, 128]`` (sparse attention)
``sglang_npu``         ``[K [L, NB, BS, H, D], V [L, NB, BS, H, D]]`` (MLA: nope, rope, indexer)
``tpu_inference``      per layer ``[NB, BS, ceil(2H/p), p, align(D, 128)]``, K and V interleaved per
                       head; D 64: ``[NB, BS, ceil(H/p), p, 128]``, K and V side by side in a row
``tpu_inference_mla``  per layer ``[NB, ceil(BS/p), p, align(kv_dim, 128)]``; variant
                       ``transposed``: ``[NB, kv_dim, BS]``
=====================  ===========================================================================

Engines may hand over one tensor per layer, a tuple per layer (``[(K0, V0), (K1, V1), ...]``),
or tensors holding every layer; :func:`flatten_kv_caches` gives the flat tensor list a layout's
``plane_tensor`` indexes (layer-major). Detection is by shape and hints; the strides always come
from the tensors themselves.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.layout import Axis, KVLayout, PlaneKind, dtype_name
from lmcache_core.vllm_cpu_order import ORDER_KINDS, order_for_isa, plane_kinds

if TYPE_CHECKING:
    import torch


class LayoutMismatch(Exception):
    """Raised by a detector whose layout does not fit the given tensors; the message says why."""


@dataclass(frozen=True)
class LayoutHints:
    """What the engine knows about its KV cache, used to tell ambiguous shapes apart.

    Every field is optional; ``kind`` names the registry entry outright.
    """

    kind: str | None = None
    num_kv_heads: int | None = None
    head_size: int | None = None
    block_size: int | None = None
    num_layers: int | None = None
    #: vLLM CPU attention's kernel (``vec``, ``vec16``, ``amx``, ``neon``): picks the ``vllm_cpu*``
    #: entry whose K/V order it keeps (:mod:`lmcache_core.vllm_cpu_order`).
    isa: str | None = None
    #: Channels per head of V when they differ from K's (Ascend ``head_size_v``).
    head_size_v: int | None = None
    #: A registry entry's variant (:attr:`LayoutKind.variants`), e.g. ``transposed`` for
    #: ``tpu_inference_mla``'s ``MLA_TRANSPOSE_KV_CACHE`` layout.
    variant: str | None = None


Detector = Callable[["Sequence[torch.Tensor]", LayoutHints], KVLayout]
Allocator = Callable[..., "list[Any]"]


@dataclass(frozen=True)
class LayoutKind:
    """One registry entry: a name, the engine tensors' named axes, a detector, an allocator."""

    name: str
    axes: str
    detect: Detector
    allocate: Allocator
    ndim: int
    mla: bool = False
    #: Values of ``variant`` the allocator takes (conformance cases are drawn for each).
    variants: tuple[str, ...] = ()
    #: False: tried only when ``LayoutHints.kind`` names this entry (its shapes look like others').
    auto: bool = True


def _common(kv_caches: Sequence[torch.Tensor], ndim: int, kind: str) -> torch.Tensor:
    """Check all tensors share shape, strides, dtype and device; return the first."""
    import torch

    if len(kv_caches) == 0:
        raise LayoutMismatch("kv_caches is empty")
    if isinstance(kv_caches[0], (list, tuple)):
        raise LayoutMismatch(
            f"{kind} takes one tensor per layer, given a {type(kv_caches[0]).__name__} per layer"
        )
    first = kv_caches[0]
    for i, t in enumerate(kv_caches):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"kv_caches[{i}]: expected torch.Tensor, given {type(t).__name__}")
        if t.dim() != ndim:
            raise LayoutMismatch(f"{kind} needs {ndim}-D tensors, kv_caches[{i}] is {t.dim()}-D")
        if (
            t.shape != first.shape
            or t.stride() != first.stride()
            or t.dtype != first.dtype
            or t.device != first.device
        ):
            raise LayoutMismatch(
                f"kv_caches[{i}] differs from kv_caches[0] in shape, stride, dtype or device"
            )
    return first


def _check_hint(hints: LayoutHints, name: str, value: int) -> None:
    want = getattr(hints, name)
    if want is not None and want != value:
        raise LayoutMismatch(f"{name}: hint says {want}, tensor shape gives {value}")


def _build(
    kind: str,
    first: torch.Tensor,
    num_tensors: int,
    *,
    num_kv: int,
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    plane_tensor: Sequence[int],
    plane_offset: Sequence[int],
    strides: tuple[int, int, int, int],
    hints: LayoutHints,
) -> KVLayout:
    _check_hint(hints, "num_kv_heads", num_kv_heads)
    _check_hint(hints, "head_size", head_size)
    _check_hint(hints, "block_size", block_size)
    _check_hint(hints, "num_layers", num_layers)
    return KVLayout.uniform(
        kind=kind,
        num_kv=num_kv,
        num_layers=num_layers,
        num_blocks=num_blocks,
        block_size=block_size,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        dtype=dtype_name(first.dtype),
        element_size=first.element_size(),
        num_tensors=num_tensors,
        tensor_shape=tuple(first.shape),
        tensor_stride=tuple(first.stride()),
        plane_tensor=tuple(plane_tensor),
        plane_offset=tuple(plane_offset),
        block_stride=strides[0],
        token_stride=strides[1],
        head_stride=strides[2],
        channel_stride=strides[3],
    )


def _per_layer_planes(num_layers: int, kv_offset: int, num_kv: int = 2) -> tuple[list[int], list[int]]:
    """Planes of per-layer tensors: plane (kv, layer) is tensor ``layer`` at ``kv * kv_offset``."""
    tensors = [layer for _kv in range(num_kv) for layer in range(num_layers)]
    offsets = [kv * kv_offset for kv in range(num_kv) for _layer in range(num_layers)]
    return tensors, offsets


# ---- detectors ------------------------------------------------------------------------------


def _per_layer_5d(kind: str, axes: str) -> Detector:
    """Detector for one 5-D tensor per layer whose axes, in order, are named by ``axes``.

    Letters: ``k`` K/V (size 2), ``b`` block, ``t`` token in block, ``h`` kv head, ``d`` channel.
    vLLM flash NHD is ``"kbthd"``, HND ``"kbhtd"``, FlashInfer ``"bkthd"``.
    """

    def detect(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
        first = _common(kv_caches, 5, kind)
        size = dict(zip(axes, first.shape, strict=True))
        stride = dict(zip(axes, first.stride(), strict=True))
        if size["k"] != 2:
            raise LayoutMismatch(f"axis {axes.index('k')} must be 2 (K, V), is {size['k']}")
        pt, po = _per_layer_planes(len(kv_caches), stride["k"])
        return _build(
            kind,
            first,
            len(kv_caches),
            num_kv=2,
            num_layers=len(kv_caches),
            num_blocks=size["b"],
            block_size=size["t"],
            num_kv_heads=size["h"],
            head_size=size["d"],
            plane_tensor=pt,
            plane_offset=po,
            strides=(stride["b"], stride["t"], stride["h"], stride["d"]),
            hints=hints,
        )

    return detect


_detect_vllm_flash_nhd = _per_layer_5d("vllm_flash_nhd", "kbthd")
_detect_vllm_flash_hnd = _per_layer_5d("vllm_flash_hnd", "kbhtd")
_detect_flashinfer = _per_layer_5d("flashinfer", "bkthd")


def _vllm_cpu(order: str) -> Detector:
    """Detector for vLLM CPU attention's ``[num_blocks, num_kv_heads, block_size, 2*head_size]``
    per layer, whose (block, head) memory is a K region then a V region in ``order``
    (:mod:`lmcache_core.vllm_cpu_order`). ``vllm_cpu`` (the ``vec`` order) is the default for
    4-D tensors; the tiled orders need ``kind`` or an ``isa`` hint."""
    kind = ORDER_KINDS[order]

    def detect(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
        first = _common(kv_caches, 4, kind)
        dtype = dtype_name(first.dtype)
        if hints.isa is not None:
            want = order_for_isa(hints.isa, dtype)
            if want != order:
                raise LayoutMismatch(f"isa {hints.isa!r} with {dtype} keeps the {want} order, not {order}")
        elif order != "vec" and hints.kind != kind:
            raise LayoutMismatch(f"the {order} order is not told apart by shape: pass kind or isa")
        nb, h, bs, two_d = first.shape
        if two_d % 2:
            raise LayoutMismatch(f"last axis must be 2*head_size (even), is {two_d}")
        d = two_d // 2
        s = first.stride()
        # Each head's K and V regions are a reinterpretation of contiguous memory, so that memory
        # must really be contiguous.
        if s[3] != 1 or s[2] != two_d:
            raise LayoutMismatch(
                f"{kind} needs each head's [block_size, 2*head_size] memory contiguous, strides are {s}"
            )
        for name, value in (("num_kv_heads", h), ("head_size", d), ("block_size", bs)):
            _check_hint(hints, name, value)
        _check_hint(hints, "num_layers", len(kv_caches))
        try:
            kinds = plane_kinds(
                order, block_size=bs, num_kv_heads=h, head_size=d, dtype=dtype,
                element_size=first.element_size(), block_stride=s[0], head_stride=s[1],
            )  # fmt: skip
        except ValueError as e:
            raise LayoutMismatch(str(e)) from None
        pt, po = _per_layer_planes(len(kv_caches), bs * d)
        return KVLayout(
            kind=kind,
            num_layers=len(kv_caches),
            num_blocks=nb,
            block_size=bs,
            kinds=kinds,
            num_tensors=len(kv_caches),
            tensor_shapes=(tuple(first.shape),) * len(kv_caches),
            tensor_strides=(tuple(s),) * len(kv_caches),
            plane_tensor=tuple(pt),
            plane_offset=tuple(po),
            extra=(("order", order),) + ((("isa", hints.isa),) if hints.isa else ()),
        )

    return detect


def _detect_mla(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    first = _common(kv_caches, 3, "mla")
    nb, bs, latent = first.shape
    if hints.kind != "mla" and hints.block_size is None:
        raise LayoutMismatch("3-D tensors are ambiguous (mla or sglang): pass block_size or kind")
    s = first.stride()
    pt, po = _per_layer_planes(len(kv_caches), 0, num_kv=1)
    return _build(
        "mla",
        first,
        len(kv_caches),
        num_kv=1,
        num_layers=len(kv_caches),
        num_blocks=nb,
        block_size=bs,
        num_kv_heads=1,
        head_size=latent,
        plane_tensor=pt,
        plane_offset=po,
        strides=(s[0], s[1], latent * s[2], s[2]),
        hints=hints,
    )


def _detect_sglang(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    first = _common(kv_caches, 3, "sglang")
    if len(kv_caches) % 2:
        raise LayoutMismatch(f"sglang needs K and V per layer (an even count), given {len(kv_caches)}")
    if hints.kind != "sglang" and hints.num_kv_heads is None:
        raise LayoutMismatch("3-D tensors are ambiguous (mla or sglang): pass num_kv_heads or kind")
    slots, h, d = first.shape
    layers = len(kv_caches) // 2
    s = first.stride()
    pt = list(range(2 * layers))
    po = [0] * (2 * layers)
    return _build(
        "sglang",
        first,
        len(kv_caches),
        num_kv=2,
        num_layers=layers,
        num_blocks=slots,
        block_size=1,
        num_kv_heads=h,
        head_size=d,
        plane_tensor=pt,
        plane_offset=po,
        strides=(s[0], 0, s[1], s[2]),
        hints=hints,
    )


def _detect_trtllm(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    first = _common(kv_caches, 6, "trtllm")
    if len(kv_caches) != 1:
        raise LayoutMismatch(f"trtllm keeps all layers in one tensor, given {len(kv_caches)}")
    nb, layers, two, h, bs, d = first.shape
    if two != 2:
        raise LayoutMismatch(f"axis 2 must be 2 (K, V), is {two}")
    s = first.stride()
    pt = [0] * (2 * layers)
    po = [kv * s[2] + layer * s[1] for kv in range(2) for layer in range(layers)]
    return _build(
        "trtllm",
        first,
        1,
        num_kv=2,
        num_layers=layers,
        num_blocks=nb,
        block_size=bs,
        num_kv_heads=h,
        head_size=d,
        plane_tensor=pt,
        plane_offset=po,
        strides=(s[0], s[4], s[3], s[5]),
        hints=hints,
    )


# ---- example allocators (tests, conformance suite, benchmarks) ------------------------------


def _alloc_vllm_flash_nhd(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    if physical_hnd:  # HND memory behind the NHD shape, as vLLM hands out for HND backends
        return [
            torch.empty(2, nb, h, bs, d, dtype=dtype, device=device).permute(0, 1, 3, 2, 4) for _ in range(L)
        ]
    return [torch.empty(2, nb, bs, h, d, dtype=dtype, device=device) for _ in range(L)]


def _alloc_vllm_flash_hnd(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    return [torch.empty(2, nb, h, bs, d, dtype=dtype, device=device) for _ in range(L)]


def _alloc_flashinfer(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    return [torch.empty(nb, 2, bs, h, d, dtype=dtype, device=device) for _ in range(L)]


def _alloc_vllm_cpu(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    return [torch.empty(nb, h, bs, 2 * d, dtype=dtype, device=device) for _ in range(L)]


def _alloc_vllm_cpu_bf16(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    if dtype != torch.bfloat16:
        raise ValueError(f"dtype: vllm_cpu_bfmmla holds torch.bfloat16, given {dtype}")
    return _alloc_vllm_cpu(L, nb, bs, h, d, dtype, device)


def _alloc_mla(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    if h != 1:
        raise ValueError(f"num_kv_heads: mla has one latent head, given {h}")
    return [torch.empty(nb, bs, d, dtype=dtype, device=device) for _ in range(L)]


def _alloc_sglang(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    if bs != 1:
        raise ValueError(f"block_size: sglang token pools have block_size 1, given {bs}")
    return [torch.empty(nb, h, d, dtype=dtype, device=device) for _ in range(2 * L)]


def _alloc_trtllm(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False
) -> list[torch.Tensor]:
    import torch

    return [torch.empty(nb, L, 2, h, bs, d, dtype=dtype, device=device)]


# ---- tuple-per-layer and accelerator layouts (Ascend, SGLang NPU, TPU) -------------------------

#: vllm-ascend aligns each KV buffer to 2 MiB when a KV connector is configured.
ASCEND_ALIGN_BYTES = 2 * 1024 * 1024
#: Channels of the sparse-attention indexer K (DeepSeek-V3.2 ``index_head_dim``).
INDEXER_WIDTH = 128


def _tensors(items: Sequence[Any], what: str) -> list[torch.Tensor]:
    import torch

    for i, t in enumerate(items):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{what}[{i}]: expected torch.Tensor, given {type(t).__name__}")
    return list(items)


def _layer_tuples(
    kv_caches: Sequence[Any], kind: str, sizes: tuple[int, ...]
) -> list[tuple[torch.Tensor, ...]]:
    """``kv_caches`` as one tuple per layer of ``len`` in ``sizes``, all layers alike."""
    if len(kv_caches) == 0:
        raise LayoutMismatch("kv_caches is empty")
    layers = []
    for i, item in enumerate(kv_caches):
        if not isinstance(item, tuple):
            raise LayoutMismatch(
                f"{kind} takes a tuple of tensors per layer, kv_caches[{i}] is {type(item).__name__}"
            )
        if len(item) not in sizes or len(item) != len(kv_caches[0]):
            raise LayoutMismatch(
                f"{kind} takes {' or '.join(map(str, sizes))} tensors per layer (the same in every layer), "
                f"kv_caches[{i}] has {len(item)}"
            )
        layers.append(tuple(_tensors(item, f"kv_caches[{i}]")))
    for n in range(len(layers[0])):
        first = layers[0][n]
        for i, layer in enumerate(layers):
            t = layer[n]
            if t.shape != first.shape or t.stride() != first.stride() or t.dtype != first.dtype:
                raise LayoutMismatch(
                    f"kv_caches[{i}][{n}] differs from kv_caches[0][{n}] in shape, stride or dtype"
                )
            if t.device != layers[0][0].device:
                raise LayoutMismatch(
                    f"kv_caches[{i}][{n}] is on {t.device}, kv_caches[0][0] on {layers[0][0].device}"
                )
    return layers


def _simple_kind(
    name: str, t: torch.Tensor, axes: str, *, padded_width: int = 0, width: int | None = None
) -> PlaneKind:
    """A one-level kind of tensor ``t`` whose axes are named by ``axes`` (``b`` block, ``t`` token,
    ``h`` head, ``d`` channel; other letters are ignored)."""
    size = dict(zip(axes, t.shape, strict=True))
    stride = dict(zip(axes, t.stride(), strict=True))
    w = width if width is not None else size["d"]
    return PlaneKind(
        name=name,
        width=w,
        heads=size.get("h", 1),
        dtype=dtype_name(t.dtype),
        element_size=t.element_size(),
        block_stride=stride["b"],
        head_stride=stride.get("h", 0) if size.get("h", 1) > 1 else 0,
        token=(Axis(size["t"], stride["t"]),),
        channel=(Axis(w, stride["d"]),),
        padded_width=padded_width,
    )


def _kind_names(count: int, mla: bool) -> tuple[str, ...]:
    return ("nope", "rope", "indexer")[:count] if mla else ("k", "v")


def _tuple_layout(
    kind: str,
    layers: list[tuple[torch.Tensor, ...]],
    kinds: tuple[PlaneKind, ...],
    hints: LayoutHints,
    extra: tuple[tuple[str, str], ...] = (),
) -> KVLayout:
    """A layout of per-layer tuples: plane (kind n, layer l) is flat tensor ``l * len(kinds) + n``."""
    n_kinds, n_layers = len(kinds), len(layers)
    flat = [t for layer in layers for t in layer]
    _check_hint(hints, "num_layers", n_layers)
    _check_hint(hints, "block_size", kinds[0].token[0].size)
    return KVLayout(
        kind=kind,
        num_layers=n_layers,
        num_blocks=int(layers[0][0].shape[0]),
        block_size=kinds[0].token[0].size,
        kinds=kinds,
        num_tensors=len(flat),
        tensor_shapes=tuple(tuple(t.shape) for t in flat),
        tensor_strides=tuple(tuple(t.stride()) for t in flat),
        plane_tensor=tuple(layer * n_kinds + n for n in range(n_kinds) for layer in range(n_layers)),
        plane_offset=(0,) * (n_kinds * n_layers),
        extra=extra,
    )


def _detect_vllm_ascend(kv_caches: Sequence[Any], hints: LayoutHints) -> KVLayout:
    layers = _layer_tuples(kv_caches, "vllm_ascend", (2,))
    k, v = layers[0]
    if k.dim() != 4 or v.dim() != 4:
        raise LayoutMismatch(
            f"vllm_ascend needs 4-D K and V [NB, BS, H, D], given {k.dim()}-D and {v.dim()}-D"
        )
    if k.shape[:3] != v.shape[:3]:
        raise LayoutMismatch(f"K {tuple(k.shape)} and V {tuple(v.shape)} differ in [NB, BS, H]")
    if k.shape[2] == 1 and k.shape[3] != v.shape[3] and hints.kind != "vllm_ascend":
        raise LayoutMismatch("one head with K and V of different widths is MLA (nope, rope): pass kind")
    _check_hint(hints, "num_kv_heads", int(k.shape[2]))
    _check_hint(hints, "head_size", int(k.shape[3]))
    _check_hint(hints, "head_size_v", int(v.shape[3]))
    kinds = (_simple_kind("k", k, "bthd"), _simple_kind("v", v, "bthd"))
    return _tuple_layout("vllm_ascend", layers, kinds, hints)


def _detect_vllm_ascend_mla(kv_caches: Sequence[Any], hints: LayoutHints) -> KVLayout:
    layers = _layer_tuples(kv_caches, "vllm_ascend_mla", (2, 3))
    for n, t in enumerate(layers[0]):
        if t.dim() != 4 or t.shape[2] != 1:
            raise LayoutMismatch(
                f"vllm_ascend_mla needs [NB, BS, 1, width] tensors, tensor {n} is {tuple(t.shape)}"
            )
        if t.shape[:2] != layers[0][0].shape[:2]:
            raise LayoutMismatch(f"tensor {n} {tuple(t.shape)} differs from tensor 0 in [NB, BS]")
    _check_hint(hints, "head_size", int(layers[0][0].shape[3]))
    if len(layers[0]) > 1:
        _check_hint(hints, "head_size_v", int(layers[0][1].shape[3]))
    names = _kind_names(len(layers[0]), mla=True)
    kinds = tuple(_simple_kind(name, t, "bthd") for name, t in zip(names, layers[0], strict=True))
    return _tuple_layout("vllm_ascend_mla", layers, kinds, hints)


def _detect_sglang_npu(kv_caches: Sequence[Any], hints: LayoutHints) -> KVLayout:
    if not isinstance(kv_caches, (list, tuple)) or len(kv_caches) not in (2, 3):
        raise LayoutMismatch("sglang_npu takes [K, V] (or MLA [nope, rope(, indexer)]), all layers each")
    tensors = _tensors(kv_caches, "kv_caches")
    first = tensors[0]
    for n, t in enumerate(tensors):
        if t.dim() != 5 or t.shape[:3] != first.shape[:3] or t.shape[3] != first.shape[3]:
            raise LayoutMismatch(
                f"sglang_npu needs [L, NB, BS, H, D] tensors alike in [L, NB, BS, H], tensor {n} is {tuple(t.shape)}"
            )
        if t.device != first.device:
            raise LayoutMismatch(f"kv_caches[{n}] is on {t.device}, kv_caches[0] on {first.device}")
    num_layers, nb, bs, h = (int(x) for x in first.shape[:4])
    mla = h == 1 and (len(tensors) == 3 or tensors[0].shape[4] != tensors[1].shape[4])
    if len(tensors) == 3 and not mla:
        raise LayoutMismatch("three tensors are MLA (nope, rope, indexer) with one head each")
    _check_hint(hints, "num_kv_heads", h)
    _check_hint(hints, "head_size", int(first.shape[4]))
    _check_hint(hints, "block_size", bs)
    _check_hint(hints, "num_layers", num_layers)
    names = _kind_names(len(tensors), mla)
    kinds = tuple(_simple_kind(name, t, "lbthd") for name, t in zip(names, tensors, strict=True))
    return KVLayout(
        kind="sglang_npu",
        num_layers=num_layers,
        num_blocks=nb,
        block_size=bs,
        kinds=kinds,
        num_tensors=len(tensors),
        tensor_shapes=tuple(tuple(t.shape) for t in tensors),
        tensor_strides=tuple(tuple(t.stride()) for t in tensors),
        plane_tensor=tuple(n for n in range(len(tensors)) for _ in range(num_layers)),
        plane_offset=tuple(layer * t.stride(0) for t in tensors for layer in range(num_layers)),
    )


def _align(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _tpu_packing(t: torch.Tensor) -> int:
    """TPU packing: values per 32-bit word (``32 / dtype bits``): fp32 1, bf16 2, fp8 4."""
    return max(1, 4 // t.element_size())


def _detect_tpu_inference(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    first = _common(kv_caches, 5, "tpu_inference")
    if hints.num_kv_heads is None or hints.head_size is None:
        raise LayoutMismatch("tpu_inference pads heads and channels: pass num_kv_heads and head_size")
    h, d = hints.num_kv_heads, hints.head_size
    nb, bs, groups, p, lanes = (int(x) for x in first.shape)
    s = first.stride()
    if p != _tpu_packing(first):
        raise LayoutMismatch(f"axis 3 must be the packing 32/dtype bits = {_tpu_packing(first)}, is {p}")
    if s[2] != p * s[3]:
        raise LayoutMismatch(f"axes 2 and 3 must be one combined head axis (stride {s[2]} == {p} * {s[3]})")
    hd64 = d == 64
    want = (_align(h, p) if hd64 else _align(2 * h, p)) // p
    want_lanes = 128 if hd64 else _align(d, 128)
    if groups != want or lanes != want_lanes:
        raise LayoutMismatch(
            f"{h} heads of {d} channels take [.., {want}, {p}, {want_lanes}], tensors are [.., {groups}, {p}, {lanes}]"
        )
    _check_hint(hints, "block_size", bs)
    _check_hint(hints, "num_layers", len(kv_caches))
    common = {
        "width": d,
        "heads": h,
        "dtype": dtype_name(first.dtype),
        "element_size": first.element_size(),
        "block_stride": s[0],
        "token": (Axis(bs, s[1]),),
        "channel": (Axis(d, s[4]),),
    }
    if hd64:  # head h's row is [K (64) | V (64)]
        kinds = (
            PlaneKind(name="k", head_stride=s[3], padded_width=d, **common),  # type: ignore[arg-type]
            PlaneKind(name="v", head_stride=s[3], padded_width=d, **common),  # type: ignore[arg-type]
        )
        v_offset = 64 * s[4]
    else:  # combined head 2h is K of head h, 2h + 1 its V
        kinds = (
            PlaneKind(name="k", head_stride=2 * s[3], padded_width=lanes, **common),  # type: ignore[arg-type]
            PlaneKind(name="v", head_stride=2 * s[3], padded_width=lanes, **common),  # type: ignore[arg-type]
        )
        v_offset = s[3]
    pt, po = _per_layer_planes(len(kv_caches), v_offset)
    return KVLayout(
        kind="tpu_inference",
        num_layers=len(kv_caches),
        num_blocks=nb,
        block_size=bs,
        kinds=kinds,
        num_tensors=len(kv_caches),
        tensor_shapes=(tuple(first.shape),) * len(kv_caches),
        tensor_strides=(tuple(s),) * len(kv_caches),
        plane_tensor=tuple(pt),
        plane_offset=tuple(po),
        extra=(("packing", str(p)), ("kernel", "hd64" if hd64 else "rpa_v3")),
    )


def _detect_tpu_inference_mla(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    transposed = hints.variant == "transposed"
    first = _common(kv_caches, 3 if transposed else 4, "tpu_inference_mla")
    s = first.stride()
    if transposed:  # [NB, kv_dim, BS]: channel-major pages
        nb, lanes, bs = (int(x) for x in first.shape)
        token, block_stride, channel_stride = Axis(bs, s[2]), s[0], s[1]
    else:  # [NB, ceil(BS/p), p, align(kv_dim, 128)]: row-major token rows
        nb, rows, p, lanes = (int(x) for x in first.shape)
        if s[1] != p * s[2]:
            raise LayoutMismatch(f"axes 1 and 2 must be one token axis (stride {s[1]} == {p} * {s[2]})")
        bs = hints.block_size if hints.block_size is not None else rows * p
        if not (rows - 1) * p < bs <= rows * p:
            raise LayoutMismatch(
                f"block_size {bs} does not fill [.., {rows}, {p}, ..] (ceil(block_size / {p}) rows)"
            )
        token, block_stride, channel_stride = Axis(bs, s[2]), s[0], s[3]
    width = hints.head_size if hints.head_size is not None else lanes
    if not 1 <= width <= lanes:
        raise LayoutMismatch(f"head_size (kv_dim) {width} must be in [1, {lanes}]")
    _check_hint(hints, "block_size", bs)
    _check_hint(hints, "num_layers", len(kv_caches))
    _check_hint(hints, "num_kv_heads", 1)
    latent = PlaneKind(
        name="latent",
        width=width,
        heads=1,
        dtype=dtype_name(first.dtype),
        element_size=first.element_size(),
        block_stride=block_stride,
        head_stride=0,
        token=(token,),
        channel=(Axis(width, channel_stride),),
        padded_width=lanes,
    )
    pt, po = _per_layer_planes(len(kv_caches), 0, num_kv=1)
    return KVLayout(
        kind="tpu_inference_mla",
        num_layers=len(kv_caches),
        num_blocks=nb,
        block_size=bs,
        kinds=(latent,),
        num_tensors=len(kv_caches),
        tensor_shapes=(tuple(first.shape),) * len(kv_caches),
        tensor_strides=(tuple(s),) * len(kv_caches),
        plane_tensor=tuple(pt),
        plane_offset=tuple(po),
        extra=(("variant", "transposed"),) if transposed else (),
    )


def _aligned_empty(shape: tuple[int, ...], dtype: Any, device: Any, align: int) -> torch.Tensor:
    """``torch.empty(shape)`` starting at an ``align``-byte boundary of a larger raw int8 buffer,
    as vllm-ascend allocates with a KV connector (``_allocate_int8_cache_tensor``)."""
    import torch

    elem = torch.empty(0, dtype=dtype).element_size()
    nbytes = math.prod(shape) * elem
    raw = torch.empty(nbytes + align, dtype=torch.int8, device=device)
    skip = (-raw.data_ptr()) % align
    return raw[skip : skip + nbytes].view(dtype).view(shape)


def _alloc_vllm_ascend(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False,
    *, head_size_v: int | None = None, variant: str | None = None,
) -> list[tuple[torch.Tensor, ...]]:  # fmt: skip
    """Per layer ``(K [nb, bs, h, d], V [nb, bs, h, head_size_v or d])``; variant ``aligned_2m``:
    each tensor at a 2 MiB boundary of its own buffer (vllm-ascend with a KV connector)."""
    import torch

    dv = head_size_v if head_size_v is not None else d

    def new(width: int) -> torch.Tensor:
        if variant == "aligned_2m":
            return _aligned_empty((nb, bs, h, width), dtype, device, ASCEND_ALIGN_BYTES)
        return torch.empty(nb, bs, h, width, dtype=dtype, device=device)

    return [(new(d), new(dv)) for _ in range(L)]


def _alloc_vllm_ascend_mla(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False,
    *, head_size_v: int | None = None, variant: str | None = None,
) -> list[tuple[torch.Tensor, ...]]:  # fmt: skip
    """Per layer ``(nope [nb, bs, 1, d], rope [nb, bs, 1, head_size_v or 64])``; variant ``dsa``
    adds ``indexer [nb, bs, 1, 128]``."""
    import torch

    if h != 1:
        raise ValueError(f"num_kv_heads: vllm_ascend_mla has one latent head, given {h}")
    widths = [d, head_size_v if head_size_v is not None else 64]
    if variant == "dsa":
        widths.append(INDEXER_WIDTH)
    return [tuple(torch.empty(nb, bs, 1, w, dtype=dtype, device=device) for w in widths) for _ in range(L)]


def _alloc_sglang_npu(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False,
    *, head_size_v: int | None = None, variant: str | None = None,
) -> list[torch.Tensor]:  # fmt: skip
    """``[K, V]`` each ``[L, nb, bs, h, d]``, views of one ``[2, L, nb, bs, h, d]`` buffer as
    SGLang's NPU pool keeps them; variant ``mla``: ``[nope, rope, indexer]`` of one head each
    (widths d, head_size_v or 64, 128), separate tensors."""
    import torch

    if variant == "mla":
        if h != 1:
            raise ValueError(f"num_kv_heads: sglang_npu mla has one latent head, given {h}")
        widths = (d, head_size_v if head_size_v is not None else 64, INDEXER_WIDTH)
        return [torch.empty(L, nb, bs, 1, w, dtype=dtype, device=device) for w in widths]
    kv = torch.empty(2, L, nb, bs, h, d, dtype=dtype, device=device)
    return [kv[0], kv[1]]


def _alloc_tpu_inference(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False,
    *, head_size_v: int | None = None, variant: str | None = None,
) -> list[torch.Tensor]:  # fmt: skip
    """Per layer ``[nb, bs, ceil(2h/p), p, align(d, 128)]`` (``p = 32 / dtype bits``); d 64:
    ``[nb, bs, ceil(h/p), p, 128]``."""
    import torch

    p = max(1, 4 // torch.empty(0, dtype=dtype).element_size())
    if d == 64:
        shape = (nb, bs, _align(h, p) // p, p, 128)
    else:
        shape = (nb, bs, _align(2 * h, p) // p, p, _align(d, 128))
    return [torch.empty(shape, dtype=dtype, device=device) for _ in range(L)]


def _alloc_tpu_inference_mla(
    L: int, nb: int, bs: int, h: int, d: int, dtype: Any, device: Any, physical_hnd: bool = False,
    *, head_size_v: int | None = None, variant: str | None = None,
) -> list[torch.Tensor]:  # fmt: skip
    """Per layer ``[nb, ceil(bs/p), p, align(d, 128)]`` (``p = 32 / dtype bits``); variant
    ``transposed``: ``[nb, d, bs]``."""
    import torch

    if h != 1:
        raise ValueError(f"num_kv_heads: tpu_inference_mla has one latent head, given {h}")
    if variant == "transposed":
        return [torch.empty(nb, d, bs, dtype=dtype, device=device) for _ in range(L)]
    p = max(1, 4 // torch.empty(0, dtype=dtype).element_size())
    return [
        torch.empty(nb, _align(bs, p) // p, p, _align(d, 128), dtype=dtype, device=device) for _ in range(L)
    ]


LAYOUT_KINDS: dict[str, LayoutKind] = {
    k.name: k
    for k in (
        LayoutKind(
            "vllm_flash_nhd",
            "[2, num_blocks, block_size, num_kv_heads, head_size] per layer",
            _detect_vllm_flash_nhd,
            _alloc_vllm_flash_nhd,
            5,
        ),
        LayoutKind(
            "vllm_flash_hnd",
            "[2, num_blocks, num_kv_heads, block_size, head_size] per layer",
            _detect_vllm_flash_hnd,
            _alloc_vllm_flash_hnd,
            5,
        ),
        LayoutKind(
            "flashinfer",
            "[num_blocks, 2, block_size, num_kv_heads, head_size] per layer",
            _detect_flashinfer,
            _alloc_flashinfer,
            5,
        ),
        LayoutKind(
            "vllm_cpu",
            "[num_blocks, num_kv_heads, block_size, 2*head_size] per layer; per head a K region "
            "[head_size, block_size] (transposed), then a V region [block_size, head_size] "
            "(vLLM CPU vec/vec16/neon kernels)",
            _vllm_cpu("vec"),
            _alloc_vllm_cpu,
            4,
        ),
        LayoutKind(
            "vllm_cpu_amx",
            "[num_blocks, num_kv_heads, block_size, 2*head_size] per layer; per head a K region "
            "[block_size/16, head_size/p, 16, p], then a V region [head_size/16, block_size/p, 16, p], "
            "p = 4/element_size (vLLM CPU amx kernel)",
            _vllm_cpu("amx"),
            _alloc_vllm_cpu,
            4,
        ),
        LayoutKind(
            "vllm_cpu_bfmmla",
            "[num_blocks, num_kv_heads, block_size, 2*head_size] per layer, bf16; per head a K region "
            "[block_size/8, head_size/4, 4, 2, 4], then a V region [head_size/2, block_size/4, 2, 4] "
            "(vLLM CPU neon kernel with bf16, BFMMLA tiles)",
            _vllm_cpu("bfmmla"),
            _alloc_vllm_cpu_bf16,
            4,
        ),
        LayoutKind(
            "mla", "[num_blocks, block_size, latent_dim] per layer", _detect_mla, _alloc_mla, 3, mla=True
        ),
        LayoutKind(
            "sglang",
            "[num_slots, num_kv_heads, head_size], K of every layer then V",
            _detect_sglang,
            _alloc_sglang,
            3,
        ),
        LayoutKind(
            "trtllm",
            "[num_blocks, num_layers, 2, num_kv_heads, block_size, head_size]",
            _detect_trtllm,
            _alloc_trtllm,
            6,
        ),
        LayoutKind(
            "vllm_ascend",
            "per layer (K [num_blocks, block_size, num_kv_heads, head_size], "
            "V [num_blocks, block_size, num_kv_heads, head_size_v])",
            _detect_vllm_ascend,
            _alloc_vllm_ascend,
            4,
            variants=("aligned_2m",),
        ),
        LayoutKind(
            "vllm_ascend_mla",
            "per layer (nope [num_blocks, block_size, 1, kv_lora_rank], "
            "rope [num_blocks, block_size, 1, qk_rope_head_dim][, indexer [num_blocks, block_size, 1, 128]])",
            _detect_vllm_ascend_mla,
            _alloc_vllm_ascend_mla,
            4,
            mla=True,
            variants=("dsa",),
        ),
        LayoutKind(
            "sglang_npu",
            "[K, V], each [num_layers, num_blocks, block_size, num_kv_heads, head_size] "
            "(MLA: nope, rope, indexer with one head)",
            _detect_sglang_npu,
            _alloc_sglang_npu,
            5,
            variants=("mla",),
            auto=False,
        ),
        LayoutKind(
            "tpu_inference",
            "[num_pages, page_size, ceil(2*num_kv_heads/p), p, align(head_size, 128)] per layer, "
            "p = 32/dtype bits, combined head 2h = K, 2h+1 = V; head_size 64: "
            "[num_pages, page_size, ceil(num_kv_heads/p), p, 128], row = [K | V]",
            _detect_tpu_inference,
            _alloc_tpu_inference,
            5,
            auto=False,
        ),
        LayoutKind(
            "tpu_inference_mla",
            "[num_pages, ceil(page_size/p), p, align(kv_dim, 128)] per layer; "
            "transposed: [num_pages, kv_dim, page_size]",
            _detect_tpu_inference_mla,
            _alloc_tpu_inference_mla,
            4,
            mla=True,
            variants=("transposed",),
            auto=False,
        ),
    )
}


def get_layout_kind(name: str) -> LayoutKind:
    """Return the registry entry ``name``; ValueError lists the known names."""
    try:
        return LAYOUT_KINDS[name]
    except KeyError:
        raise ValueError(f"layout kind: expected one of {sorted(LAYOUT_KINDS)}, given {name!r}") from None


def flatten_kv_caches(kv_caches: Sequence[Any]) -> list[Any]:
    """The flat tensor list a layout's ``plane_tensor`` indexes: one tensor per layer stays as
    it is; a tuple (or list) of tensors per layer is flattened layer-major
    (``[(K0, V0), (K1, V1)]`` -> ``[K0, V0, K1, V1]``)."""
    if not isinstance(kv_caches, (list, tuple)):
        raise TypeError(f"kv_caches: expected a list or tuple of tensors, given {type(kv_caches).__name__}")
    if not any(isinstance(item, (list, tuple)) for item in kv_caches):
        return list(kv_caches)
    flat: list[Any] = []
    for i, item in enumerate(kv_caches):
        if not isinstance(item, (list, tuple)):
            raise TypeError(
                f"kv_caches[{i}]: expected a tuple of tensors like the other layers, given {type(item).__name__}"
            )
        flat.extend(item)
    return flat


def _shapes(item: Any) -> Any:
    if isinstance(item, (list, tuple)):
        return tuple(_shapes(t) for t in item)
    return tuple(item.shape) if hasattr(item, "shape") else type(item).__name__


def detect_layout(kv_caches: Sequence[Any], hints: LayoutHints | None = None) -> KVLayout:
    """Describe ``kv_caches`` (one layer group) as a :class:`KVLayout`.

    ``kv_caches``: one tensor per layer, a tuple of tensors per layer, or tensors holding every
    layer, as the engine hands them over; the layout indexes :func:`flatten_kv_caches` of it.

    With ``hints.kind`` set only that entry is tried. Otherwise every entry is tried and exactly
    one must fit; an ambiguous or unknown shape raises ValueError naming what to pass.
    """
    hints = hints or LayoutHints()
    if not isinstance(kv_caches, (list, tuple)):
        raise TypeError(f"kv_caches: expected a list or tuple of tensors, given {type(kv_caches).__name__}")
    kv_caches = [tuple(item) if isinstance(item, list) else item for item in kv_caches]
    if hints.kind is not None:
        kind = get_layout_kind(hints.kind)
        try:
            return kind.detect(kv_caches, hints)
        except LayoutMismatch as e:
            raise ValueError(f"kv_caches: do not fit layout {kind.name} ({kind.axes}): {e}") from None
    found: list[KVLayout] = []
    reasons: list[str] = []
    for kind in LAYOUT_KINDS.values():
        if not kind.auto:
            reasons.append(f"{kind.name}: tried only when named (LayoutHints(kind={kind.name!r}))")
            continue
        try:
            found.append(kind.detect(kv_caches, hints))
        except LayoutMismatch as e:
            reasons.append(f"{kind.name}: {e}")
    if len(found) == 1:
        return found[0]
    shapes = _shapes(kv_caches[0]) if len(kv_caches) else ()
    if not found:
        raise ValueError(
            f"kv_caches: expected a known paged layout, given {len(kv_caches)} tensor(s) of shape "
            f"{shapes}; " + "; ".join(reasons)
        )
    raise ValueError(
        f"kv_caches: shape {shapes} fits several layouts {[f.kind for f in found]}; pass "
        "LayoutHints(kind=...) or num_kv_heads/block_size hints"
    )


def allocate_example(
    kind: str,
    *,
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: Any,
    device: Any = "cpu",
    physical_hnd: bool = False,
    head_size_v: int | None = None,
    variant: str | None = None,
) -> tuple[list[Any], LayoutHints]:
    """Allocate uninitialised engine tensors of ``kind`` as the engine hands them over (one
    tensor per layer, or a tuple per layer: :func:`flatten_kv_caches`) and the hints that detect
    them. ``head_size_v`` and ``variant`` are passed to entries that take them."""
    k = get_layout_kind(kind)
    if variant is not None and variant not in k.variants:
        raise ValueError(f"variant: expected one of {list(k.variants)} for layout {kind}, given {variant!r}")
    options = {n: v for n, v in (("head_size_v", head_size_v), ("variant", variant)) if v is not None}
    tensors = k.allocate(
        num_layers, num_blocks, block_size, num_kv_heads, head_size, dtype, device, physical_hnd, **options
    )
    hints = LayoutHints(
        kind=kind,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        num_layers=num_layers,
        head_size_v=head_size_v,
        variant=variant,
    )
    return tensors, hints
