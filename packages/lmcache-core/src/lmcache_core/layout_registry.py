"""Registry of the paged KV layouts engines use, each with a detector and an example allocator.

Every entry maps an engine's tensors onto the one :class:`~lmcache_core.layout.KVLayout`
description (named axes plus strides read from the tensors). Shapes below use named axes:

======================  ==============================================================
kind                    engine tensors
======================  ==============================================================
``vllm_flash_nhd``      per layer ``[2, num_blocks, block_size, num_kv_heads, head_size]``
``vllm_flash_hnd``      per layer ``[2, num_blocks, num_kv_heads, block_size, head_size]``
``flashinfer``          per layer ``[num_blocks, 2, block_size, num_kv_heads, head_size]``
``vllm_cpu``            per layer ``[num_blocks, num_kv_heads, block_size, 2*head_size]``;
                        each head's memory is block_size rows of K, then block_size rows of V
``mla``                 per layer ``[num_blocks, block_size, latent_dim]`` (no separate V)
``sglang``              2*num_layers tensors ``[num_slots, num_kv_heads, head_size]``:
                        K of every layer, then V of every layer
``trtllm``              one tensor ``[num_blocks, num_layers, 2, num_kv_heads, block_size,
                        head_size]``
======================  ==============================================================

Detection is by shape and hints; the strides always come from the tensors themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lmcache_core.layout import KVLayout, dtype_name

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


Detector = Callable[["Sequence[torch.Tensor]", LayoutHints], KVLayout]
Allocator = Callable[..., "list[torch.Tensor]"]


@dataclass(frozen=True)
class LayoutKind:
    """One registry entry: a name, the engine tensors' named axes, a detector, an allocator."""

    name: str
    axes: str
    detect: Detector
    allocate: Allocator
    ndim: int
    mla: bool = False


def _common(kv_caches: Sequence[torch.Tensor], ndim: int, kind: str) -> torch.Tensor:
    """Check all tensors share shape, strides, dtype and device; return the first."""
    import torch

    if len(kv_caches) == 0:
        raise LayoutMismatch("kv_caches is empty")
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
    return KVLayout(
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


def _detect_vllm_cpu(kv_caches: Sequence[torch.Tensor], hints: LayoutHints) -> KVLayout:
    first = _common(kv_caches, 4, "vllm_cpu")
    nb, h, bs, two_d = first.shape
    if two_d % 2:
        raise LayoutMismatch(f"last axis must be 2*head_size (even), is {two_d}")
    d = two_d // 2
    s = first.stride()
    # Each head holds block_size rows of K then block_size rows of V: the [block_size, 2*head_size]
    # view is a reinterpretation of contiguous memory, so that memory must really be contiguous.
    if s[3] != 1 or s[2] != two_d:
        raise LayoutMismatch(
            f"vllm_cpu needs each head's [block_size, 2*head_size] memory contiguous, strides are {s}"
        )
    pt, po = _per_layer_planes(len(kv_caches), bs * d)
    return _build(
        "vllm_cpu",
        first,
        len(kv_caches),
        num_kv=2,
        num_layers=len(kv_caches),
        num_blocks=nb,
        block_size=bs,
        num_kv_heads=h,
        head_size=d,
        plane_tensor=pt,
        plane_offset=po,
        strides=(s[0], d, s[1], 1),
        hints=hints,
    )


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
            "[num_blocks, num_kv_heads, block_size, 2*head_size] per layer "
            "(per head: block_size rows of K, then of V)",
            _detect_vllm_cpu,
            _alloc_vllm_cpu,
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
    )
}


def get_layout_kind(name: str) -> LayoutKind:
    """Return the registry entry ``name``; ValueError lists the known names."""
    try:
        return LAYOUT_KINDS[name]
    except KeyError:
        raise ValueError(f"layout kind: expected one of {sorted(LAYOUT_KINDS)}, given {name!r}") from None


def detect_layout(kv_caches: Sequence[torch.Tensor], hints: LayoutHints | None = None) -> KVLayout:
    """Describe ``kv_caches`` (one layer group) as a :class:`KVLayout`.

    With ``hints.kind`` set only that entry is tried. Otherwise every entry is tried and exactly
    one must fit; an ambiguous or unknown shape raises ValueError naming what to pass.
    """
    hints = hints or LayoutHints()
    if not isinstance(kv_caches, (list, tuple)):
        raise TypeError(f"kv_caches: expected a list or tuple of tensors, given {type(kv_caches).__name__}")
    if hints.kind is not None:
        kind = get_layout_kind(hints.kind)
        try:
            return kind.detect(kv_caches, hints)
        except LayoutMismatch as e:
            raise ValueError(f"kv_caches: do not fit layout {kind.name} ({kind.axes}): {e}") from None
    found: list[KVLayout] = []
    reasons: list[str] = []
    for kind in LAYOUT_KINDS.values():
        try:
            found.append(kind.detect(kv_caches, hints))
        except LayoutMismatch as e:
            reasons.append(f"{kind.name}: {e}")
    if len(found) == 1:
        return found[0]
    shapes = tuple(kv_caches[0].shape) if len(kv_caches) else ()
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
) -> tuple[list[torch.Tensor], LayoutHints]:
    """Allocate uninitialised engine tensors of ``kind`` and the hints that detect them."""
    k = get_layout_kind(kind)
    tensors = k.allocate(
        num_layers, num_blocks, block_size, num_kv_heads, head_size, dtype, device, physical_hnd
    )
    hints = LayoutHints(
        kind=kind,
        num_kv_heads=num_kv_heads,
        head_size=head_size,
        block_size=block_size,
        num_layers=num_layers,
    )
    return tensors, hints
