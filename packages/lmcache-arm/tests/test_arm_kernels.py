"""The compiled host kernels (needs the built ``lmcache_arm._C``; no device).

Bitwise against the reference backend over every layout of the core registry (plus permuted and
channel-strided views), fp16 / bf16 / fp32 / fp8, -1 slots, skip_prefix, under every copy policy
(coalescing on and off, NEON-only and memcpy-only rows, one-token spans) and thread count; and the
native checks: a bad slot or size raises ValueError naming it, with nothing written.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
import torch

from lmcache_arm import _C, kernels
from lmcache_core.backend import reference_backend
from lmcache_core.layout import KVLayout, PlaneKind
from lmcache_core.layout_registry import LayoutHints, allocate_example, detect_layout
from lmcache_core.native_args import KIND_FIELDS, native_layout
from lmcache_core.selection import get_backend
from lmcache_core.testing import Case, make_cases
from lmcache_core.testing.cases import bits, poison_, random_bits_

CASES = make_cases(seed=11, count=6)  # 6 per layout variant: every dtype, pattern and skip mode

#: name -> (set_tuning overrides of the defaults, num_threads); small cases: one thread per byte so
#: the split over threads is exercised too
POLICIES: dict[str, tuple[dict[str, object], int]] = {
    "default-2threads": ({"min_bytes_per_thread": 1}, 2),
    "default-1thread": ({}, 1),
    "no-coalescing": ({"coalesce": False, "min_bytes_per_thread": 1}, 2),
    "all-neon-heads-outer": (
        {"memcpy_min_bytes": 1 << 62, "tokens_outer": False, "min_bytes_per_thread": 1},
        2,
    ),
    "all-memcpy-tokens-outer": ({"memcpy_min_bytes": 0, "tokens_outer": True, "min_bytes_per_thread": 1}, 2),
    "one-token-spans-prefetch": (
        {"max_span_bytes": 1, "prefetch_bytes": 4096, "prefetch_distance": 3, "min_bytes_per_thread": 1},
        3,
    ),
    "prefetch-whole-spans": ({"prefetch_bytes": 1 << 20, "min_bytes_per_thread": 1}, 2),
}


@pytest.fixture
def policy(request: pytest.FixtureRequest) -> Iterator[int]:
    """Set the copy policy named by the test's parameter; yield its thread count; restore defaults."""
    overrides, threads = POLICIES[request.param]
    _C.reset_tuning()
    _C.set_tuning(**{**_C.get_tuning(), **overrides})
    try:
        yield threads
    finally:
        _C.reset_tuning()


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(bits(a), bits(b))


def _check_gather(case: Case, threads: int) -> None:
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    got = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    want = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    kernels.gather(layout, kv, slots, got, case.skip_prefix, num_threads=threads)
    reference_backend().gather(layout, kv, slots, want, case.skip_prefix)
    assert _same(got, want), case.describe()


def _check_scatter(case: Case, threads: int) -> None:
    kv, layout = case.poisoned_kv()
    want_kv, _ = case.poisoned_kv()
    slots = case.slot_tensor(unique=True)
    src = case.random_chunk()
    kernels.scatter(layout, kv, slots, src, case.skip_prefix, num_threads=threads)
    reference_backend().scatter(layout, want_kv, slots, src, case.skip_prefix)
    for got_t, want_t in zip(kv, want_kv, strict=True):
        assert _same(got_t, want_t), case.describe()


@pytest.mark.parametrize("policy", list(POLICIES), indirect=True)
def test_gather_matches_reference_under_every_policy(policy: int) -> None:
    for case in CASES:
        _check_gather(case, policy)


@pytest.mark.parametrize("policy", list(POLICIES), indirect=True)
def test_scatter_matches_reference_under_every_policy(policy: int) -> None:
    for case in CASES:
        _check_scatter(case, policy)


def test_cases_cover_layouts_dtypes_and_edges() -> None:
    """The fixed cases above reach every layout, the four dtypes, -1 slots and skip_prefix."""
    from lmcache_core.layout_registry import LAYOUT_KINDS

    assert {c.kind for c in CASES} == set(LAYOUT_KINDS)
    assert {torch.float16, torch.bfloat16, torch.float32, torch.float8_e4m3fn} <= {c.dtype for c in CASES}
    assert any(-1 in c.slot_mapping[c.skip_prefix :] for c in CASES)
    assert any(0 < c.skip_prefix < c.num_tokens for c in CASES)


# ---- views the registry cases do not produce ---------------------------------------------------


def _strided_view_cases() -> list[tuple[str, list[torch.Tensor], LayoutHints]]:
    """Engine tensors whose head or channel axis is strided (the element-by-element path)."""
    nb, bs, h, d = 5, 4, 3, 6
    nhd_channel_strided = [
        torch.empty(2, nb, bs, d, h, dtype=torch.bfloat16).permute(0, 1, 2, 4, 3) for _ in range(2)
    ]
    mla_channel_strided = [torch.empty(nb, 40, bs, dtype=torch.float16).permute(0, 2, 1) for _ in range(3)]
    flashinfer_heads_gapped = [
        torch.empty(nb, 2, bs, h, 2 * d, dtype=torch.float32)[..., :d] for _ in range(2)
    ]
    return [
        (
            "nhd-channel-strided",
            nhd_channel_strided,
            LayoutHints(kind="vllm_flash_nhd", num_kv_heads=h, head_size=d, block_size=bs),
        ),
        ("mla-channel-strided", mla_channel_strided, LayoutHints(kind="mla", block_size=bs)),
        (
            "flashinfer-heads-gapped",
            flashinfer_heads_gapped,
            LayoutHints(kind="flashinfer", num_kv_heads=h, head_size=d, block_size=bs),
        ),
    ]


@pytest.mark.parametrize("name", [c[0] for c in _strided_view_cases()])
def test_strided_views_match_reference(name: str) -> None:
    _, kv, hints = next(c for c in _strided_view_cases() if c[0] == name)
    gen = torch.Generator().manual_seed(5)
    for t in kv:
        random_bits_(t, gen)
    layout = detect_layout(kv, hints)
    expected_run = layout.head_size if name == "flashinfer-heads-gapped" else 1
    assert layout.contiguous_run() == expected_run
    slots = torch.tensor([3, 4, -1, 17, 0, 19, 8], dtype=torch.int64)
    shape = (layout.num_kv, layout.num_layers, len(slots), layout.hidden)
    got = poison_(torch.empty(shape, dtype=kv[0].dtype))
    want = poison_(torch.empty(shape, dtype=kv[0].dtype))
    kernels.gather(layout, kv, slots, got, 1)
    reference_backend().gather(layout, kv, slots, want, 1)
    assert _same(got, want)

    src = random_bits_(torch.empty(shape, dtype=kv[0].dtype), gen)
    ref_kv = [t.clone() for t in kv]  # clone keeps strides of these dense views
    ref_layout = detect_layout(ref_kv, hints)
    kernels.scatter(layout, kv, slots, src, 0)
    reference_backend().scatter(ref_layout, ref_kv, slots, src, 0)
    for a, b in zip(kv, ref_kv, strict=True):
        assert _same(a, b)


@pytest.mark.parametrize("kind", ["vllm_flash_nhd", "sglang", "mla", "vllm_cpu", "vllm_cpu_amx"])
def test_consecutive_slots_across_blocks(kind: str) -> None:
    """Slots running over block boundaries (one coalesced span where blocks are adjacent); for the
    transposed and tiled vLLM CPU orders, spans that end where a token level carries."""
    bs = {"sglang": 1, "vllm_cpu_amx": 16}.get(kind, 4)
    heads = 1 if kind in ("mla", "vllm_cpu") else 2
    kv, hints = allocate_example(
        kind,
        num_layers=2,
        num_blocks=16,
        block_size=bs,
        num_kv_heads=heads,
        head_size=32,
        dtype=torch.bfloat16,
    )
    gen = torch.Generator().manual_seed(3)
    for t in kv:
        random_bits_(t, gen)
    layout = detect_layout(kv, hints)
    n = 2 * bs + 3
    slots = torch.arange(2, 2 + n, dtype=torch.int64)
    shape = (layout.num_kv, layout.num_layers, n, layout.hidden)
    got = poison_(torch.empty(shape, dtype=torch.bfloat16))
    want = poison_(torch.empty(shape, dtype=torch.bfloat16))
    kernels.gather(layout, kv, slots, got)
    reference_backend().gather(layout, kv, slots, want, 0)
    assert _same(got, want)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_counts_agree(threads: int) -> None:
    _C.set_tuning(**{**_C.get_tuning(), "min_bytes_per_thread": 1})
    try:
        case = next(c for c in CASES if c.kind == "trtllm" and c.skip_prefix < c.num_tokens)
        _check_gather(case, threads)
        _check_scatter(case, threads)
    finally:
        _C.reset_tuning()


# ---- native checks: ValueError before the first byte is written ----------------------------------


def _nhd(num_blocks: int = 4, block_size: int = 4) -> tuple[list[torch.Tensor], KVLayout]:
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=num_blocks,
        block_size=block_size,
        num_kv_heads=2,
        head_size=8,
        dtype=torch.float16,
    )
    for t in kv:
        poison_(t)
    return kv, detect_layout(kv, hints)


@pytest.mark.parametrize("bad", [16, 1000, -2, -(2**40)])
def test_bad_slot_raises_and_gather_writes_nothing(bad: int) -> None:
    kv, layout = _nhd()  # 16 slots
    slots = torch.tensor([0, 1, 2, 3, 4, 5, bad], dtype=torch.int64)
    out = poison_(torch.empty(2, 2, 7, 16, dtype=torch.float16))
    with pytest.raises(ValueError, match=rf"slot_mapping\[6\]: expected -1 <= slot < 16 .*given {bad}$"):
        kernels.gather(layout, kv, slots, out)  # the native check
    assert bool((bits(out) == bits(poison_(torch.empty(1, dtype=torch.float16)))).all())


@pytest.mark.parametrize("path", ["native", "backend"])
def test_bad_slot_raises_and_scatter_writes_nothing(path: str) -> None:
    kv, layout = _nhd()
    before = [t.clone() for t in kv]
    slots = torch.tensor([0, 1, 99, 3], dtype=torch.int64)
    src = torch.zeros(2, 2, 4, 16, dtype=torch.float16)
    scatter = kernels.scatter if path == "native" else get_backend("cpu", "arm").scatter
    with pytest.raises(ValueError, match=r"slot_mapping") as raised:
        scatter(layout, kv, slots, src)
    message = str(raised.value)  # native: "slot_mapping[2]: ... given 99"; core: "given 99 at index 2"
    assert "given 99" in message and ("[2]" in message or "index 2" in message), message
    for a, b in zip(kv, before, strict=True):
        assert _same(a, b)


def test_bad_slot_behind_skip_prefix_is_ignored() -> None:
    kv, layout = _nhd()
    slots = torch.tensor([2**40, -5, 3], dtype=torch.int64)
    src = torch.ones(2, 2, 3, 16, dtype=torch.float16)
    kernels.scatter(layout, kv, slots, src, 2)
    want, _ = _nhd()
    reference_backend().scatter(layout, want, slots, src, 2)
    for a, b in zip(kv, want, strict=True):
        assert _same(a, b)


def test_chunk_size_mismatch_raises() -> None:
    kv, layout = _nhd()
    slots = torch.tensor([0, 1, 2], dtype=torch.int64)
    out = poison_(torch.empty(2, 2, 2, 16, dtype=torch.float16))  # 2 tokens, slot mapping has 3
    with pytest.raises(ValueError, match=r"chunk: expected 384 bytes .*given 256"):
        kernels.gather(layout, kv, slots, out)


def test_kv_tensor_smaller_than_layout_raises() -> None:
    """A layout describing more blocks than the tensors hold is refused, never written past."""
    _, big_layout = _nhd(num_blocks=8)
    small, _ = _nhd(num_blocks=4)
    before = [t.clone() for t in small]
    slots = torch.tensor([0, 1], dtype=torch.int64)
    src = torch.zeros(2, 2, 2, 16, dtype=torch.float16)
    with pytest.raises(
        ValueError, match=r"plane_offset\[2\]: plane spans elements .* expected to fit in its"
    ):
        kernels.scatter(big_layout, small, slots, src)
    for a, b in zip(small, before, strict=True):
        assert _same(a, b)


def _raw_args(
    kv: list[torch.Tensor], layout: KVLayout, chunk: torch.Tensor, slots: torch.Tensor
) -> dict[str, object]:
    args = native_layout(layout, kv)
    return dict(
        tensor_address=list(args.tensor_address),
        tensor_nbytes=list(args.tensor_nbytes),
        plane_tensor=list(args.plane_tensor),
        plane_offset=list(args.plane_offset),
        dims=args.dims,
        kinds=[list(k) for k in args.kinds],
        slot_mapping=slots.data_ptr(),
        num_tokens=slots.numel(),
        chunk=chunk.data_ptr(),
        chunk_nbytes=chunk.numel() * chunk.element_size(),
        skip_prefix=0,
        num_threads=1,
    )


#: Names of the KIND_FIELDS integers of one kind, in order (kv_index.h kv_kind_unpack).
_KIND_FIELD_NAMES = (
    ("heads", "width", "element_size", "block_stride", "head_stride", "token_levels")
    + tuple(f"token_size{i}" for i in range(3))
    + tuple(f"token_stride{i}" for i in range(3))
    + ("channel_levels",)
    + tuple(f"channel_size{i}" for i in range(3))
    + tuple(f"channel_stride{i}" for i in range(3))
)


def _kinds_with(kind: int, **fields: int) -> Callable[[dict[str, object]], None]:
    """An edit of _raw_args: the named fields of ``kinds[kind]`` set."""
    assert len(_KIND_FIELD_NAMES) == KIND_FIELDS

    def edit(args: dict[str, object]) -> None:
        kinds = args["kinds"]
        assert isinstance(kinds, list)
        for name, value in fields.items():
            kinds[kind][_KIND_FIELD_NAMES.index(name)] = value

    return edit


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"plane_tensor": [0, 1, 0], "plane_offset": [0, 0, 0]},
            r"plane_tensor/plane_offset: expected 4 entries \(num_kinds \* num_layers\), given 3",
        ),
        ({"plane_offset": [0, 0, 0]}, r"plane_offset: expected 4 entries .*given 3"),
        ({"plane_tensor": [0, 1, 2, 1]}, r"plane_tensor\[2\]: expected a tensor index in \[0, 2\), given 2"),
        ({"plane_offset": [0, 0, 0, 257]}, r"plane_offset\[3\]: plane spans elements \[257, 257 \+ 256\)"),
        (_kinds_with(1, element_size=3), r"kinds\[1\]\.element_size: expected 1, 2, 4 or 8 bytes, given 3"),
        (
            _kinds_with(0, channel_stride0=-1),
            r"kinds\[0\]\.channel\.stride\[0\]: expected >= 0 elements, given -1",
        ),
        (_kinds_with(1, token_levels=4), r"kinds\[1\]\.token: expected 1 to 3 levels, given 4"),
        (
            _kinds_with(0, token_levels=2, token_size1=2),
            r"kinds\[0\]\.token: expected sizes that multiply to block_size 4, given a product of 8",
        ),
        (_kinds_with(1, channel_size0=4), r"kinds\[1\]\.channel: expected sizes that multiply to width 8"),
        (_kinds_with(0, token_size0=0), r"kinds\[0\]\.token\.size\[0\]: expected >= 1, given 0"),
        (_kinds_with(1, heads=0), r"kinds\[1\]\.heads: expected >= 1, given 0"),
        (_kinds_with(0, token_stride0=2**62), r"geometry: plane extent of kinds\[0\].* overflows int64"),
        ({"dims": (5, 2, 4, 4)}, r"kinds: expected num_kinds \(dims\[0\] = 5, 1 to 4\) entries, given 2"),
        ({"dims": (2, 2, 0, 4)}, r"num_blocks: expected >= 1, given 0"),
        ({"dims": (2, 2, 2**62, 4)}, r"overflows int64"),
        ({"skip_prefix": 5}, r"skip_prefix: expected 0 <= skip_prefix <= 3, given 5"),
        ({"num_threads": -1}, r"num_threads: expected >= 0"),
        ({"tensor_nbytes": [8]}, r"tensor_nbytes: expected 2 entries"),
        ({"tensor_address": [0, 0]}, r"kv_caches\[0\]: expected a non-null data pointer"),
        (
            {"chunk_nbytes": 10**6},
            r"chunk: expected 384 bytes \(\[2, 3, 16\] x 2 \+ \[2, 3, 16\] x 2 bytes.*given 1000000",
        ),
    ],
)
def test_native_argument_checks(
    change: dict[str, object] | Callable[[dict[str, object]], None], message: str
) -> None:
    kv, layout = _nhd()
    before = [t.clone() for t in kv]
    slots = torch.tensor([0, 5, 9], dtype=torch.int64)
    chunk = torch.zeros(2, 2, 3, 16, dtype=torch.float16)
    args = _raw_args(kv, layout, chunk, slots)
    if callable(change):
        change(args)
    else:
        args.update(change)
    with pytest.raises(ValueError, match=message):
        _C.scatter(**args)
    for a, b in zip(kv, before, strict=True):
        assert _same(a, b)


def test_wrapper_rejects_non_host_and_misshapen_inputs() -> None:
    kv, layout = _nhd()
    slots = torch.tensor([0, 1], dtype=torch.int64)
    out = torch.empty(2, 2, 2, 16, dtype=torch.float16)
    meta_kv = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in kv]
    with pytest.raises(ValueError, match=r"kv_caches\[0\]: expected a tensor in host memory"):
        kernels.gather(layout, meta_kv, slots, out)
    with pytest.raises(ValueError, match=r"out: expected a contiguous tensor"):
        kernels.gather(layout, kv, slots, torch.empty(2, 2, 16, 2, dtype=torch.float16).transpose(2, 3))
    with pytest.raises(TypeError, match=r"slot_mapping: expected a 1-D int64 tensor"):
        kernels.gather(layout, kv, slots.int(), out)
    with pytest.raises(ValueError, match=r"chunk: expected 256 bytes .*given 512"):
        kernels.gather(layout, kv, slots, out.float())  # native size check
    with pytest.raises(ValueError, match=r"num_threads: expected a positive int"):
        kernels.gather(layout, kv, slots, out, num_threads=0)
    with pytest.raises(
        TypeError,
        match=r"kv_caches\[0\]: expected 2-byte elements \(float16, plane kind k, plane 0\), given torch.float32",
    ):
        kernels.gather(layout, [t.float() for t in kv], slots, out)  # native_layout's element size
    with pytest.raises(ValueError, match=r"kv_caches: expected 2 tensors for layout vllm_flash_nhd, given 1"):
        kernels.gather(layout, kv[:1], slots, out)


def test_user_facing_checks_are_the_backends() -> None:
    """Issue 11.4: the kernels check what memory safety needs; dtype and shape checks are the
    core's, once, through ``Backend`` (there is no ``validate=`` flag)."""
    kv, layout = _nhd()
    slots = torch.tensor([0, 1], dtype=torch.int64)
    out = torch.empty(2, 2, 2, 16, dtype=torch.float16)
    arm = get_backend("cpu", "arm")
    assert arm.handles(layout)
    with pytest.raises(TypeError, match=r"out: expected dtype float16, given float32"):
        arm.gather(layout, kv, slots, out.float())
    with pytest.raises(ValueError, match=r"slot_mapping\[\d+\]: expected slots in \[-1, 16\)"):
        arm.gather(layout, kv, torch.tensor([0, 16]), out)
    with pytest.raises(TypeError, match="validate"):
        kernels.gather(layout, kv, slots, out, validate=True)  # type: ignore[call-arg]


def test_tuning_knob_checks_and_reset() -> None:
    _C.reset_tuning()
    defaults = _C.get_tuning()
    with pytest.raises(ValueError, match=r"max_span_bytes: expected >= 1, given 0"):
        _C.set_tuning(memcpy_min_bytes=0, max_span_bytes=0, coalesce=True)
    with pytest.raises(ValueError, match=r"prefetch_bytes: expected >= 0, given -1"):
        _C.set_tuning(memcpy_min_bytes=0, max_span_bytes=1, coalesce=True, prefetch_bytes=-1)
    changed = {
        "memcpy_min_bytes": 7,
        "max_span_bytes": 9,
        "coalesce": False,
        "prefetch_bytes": 11,
        "tokens_outer": not defaults["tokens_outer"],
        "prefetch_distance": 13,
        "min_bytes_per_thread": 17,
    }
    _C.set_tuning(**changed)
    assert _C.get_tuning() == changed
    _C.reset_tuning()
    assert _C.get_tuning() == defaults


# ---- hostile layouts and racing callers --------------------------------------------------------


def _hostile_layouts(layout: KVLayout, num_blocks: int) -> dict[str, KVLayout]:
    """Layouts edited by hand (``dataclasses.replace``) whose plane extents overflow int64.

    ``wrapped-end``: every plane starts 64 elements before its tensor's first byte once
    ``plane_offset * element_size`` wraps, and a block stride makes ``plane_offset + extent`` wrap to
    a negative end that "fit" the old native check (fp16: wrote before the tensor; fp8: SIGSEGV).
    """
    planes = len(layout.plane_offset)

    def block_stride(stride: int) -> tuple[PlaneKind, ...]:
        return tuple(dataclasses.replace(k, block_stride=stride) for k in layout.kinds)

    return {
        "wrapped-end": dataclasses.replace(
            layout,
            plane_offset=(2**63 - 64,) * planes,
            kinds=block_stride((2**62 + 2**10) // (num_blocks - 1) + 1),
        ),
        "offset-plus-extent-wraps": dataclasses.replace(
            layout, plane_offset=(*layout.plane_offset[:-1], 2**63 - 2)
        ),
        "extent-overflows": dataclasses.replace(layout, kinds=block_stride(2**62)),
    }


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
@pytest.mark.parametrize("variant", ["wrapped-end", "offset-plus-extent-wraps", "extent-overflows"])
@pytest.mark.parametrize("path", ["native", "backend"])
def test_overflowing_plane_layout_is_refused(dtype: torch.dtype, variant: str, path: str) -> None:
    """Issue 9.1: the native check alone (kernels) and the public API (Backend) both refuse, nothing written.

    The KV tensors sit inside one larger buffer, so a write before the first tensor's first byte
    shows up in the guard bytes in front of it.
    """
    nb, bs, heads, d = 4, 4, 2, 8
    per = 2 * nb * bs * heads * d  # elements of one [2, NB, BS, H, D] tensor
    arena = poison_(torch.empty(4 * per, dtype=dtype))
    kv = [arena[(1 + i) * per : (2 + i) * per].view(2, nb, bs, heads, d) for i in range(2)]
    _, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=nb,
        block_size=bs,
        num_kv_heads=heads,
        head_size=d,
        dtype=dtype,
    )
    bad = _hostile_layouts(detect_layout(kv, hints), nb)[variant]
    before = arena.clone()
    slots = torch.tensor([0, 1], dtype=torch.int64)
    chunk = torch.zeros(2, 2, 2, heads * d, dtype=dtype)
    out = chunk.clone()
    if path == "native":
        calls = [
            lambda: kernels.scatter(bad, kv, slots, chunk),
            lambda: kernels.gather(bad, kv, slots, out),
        ]
        pattern = r"^(plane_offset\[\d+\]: plane spans elements|geometry: plane extent)"
    else:
        arm = get_backend("cpu", "arm")
        calls = [lambda: arm.scatter(bad, kv, slots, chunk), lambda: arm.gather(bad, kv, slots, out)]
        pattern = (
            r"^(plane_offset\[\d+\]: plane \d+ \(kind [kv], layer \d\) spans elements"
            r"|block_stride, token_stride, head_stride, channel_stride: a plane spans)"
        )
    for call in calls:
        with pytest.raises(ValueError, match=pattern):
            call()
    assert _same(arena, before)
    assert _same(out, chunk)


_RACE_SCRIPT = r"""
import sys, threading, time
import torch
from lmcache_arm import kernels
from lmcache_core.layout_registry import allocate_example, detect_layout

max_calls, seconds = int(sys.argv[1]), float(sys.argv[2])
kv, hints = allocate_example("vllm_flash_nhd", num_layers=2, num_blocks=64, block_size=16,
                             num_kv_heads=2, head_size=8, dtype=torch.float8_e4m3fn)
layout = detect_layout(kv, hints)
n = 4096
slots = torch.arange(n, dtype=torch.int64) % layout.num_slots
view = slots.numpy()  # shares memory: the racing thread writes the very int64s the kernel reads
chunk = torch.zeros(2, 2, n, layout.hidden, dtype=torch.float8_e4m3fn)
stop = threading.Event()

def flip() -> None:  # the last slot (read last by a check, and again by a plan) goes wild and back
    last = n - 1
    while not stop.is_set():
        view[last] = 2**40
        view[last] = last % layout.num_slots

sys.setswitchinterval(1e-5)  # hand the GIL back and forth quickly: more calls race the writer
racer = threading.Thread(target=flip)
racer.start()
ok = refused = 0
deadline = time.monotonic() + seconds
try:
    for call in range(max_calls):
        if time.monotonic() > deadline:
            break
        fn = kernels.gather if call % 2 else kernels.scatter
        try:
            fn(layout, kv, slots, chunk, num_threads=1)
            ok += 1
        except ValueError as e:
            assert str(e).startswith(f"slot_mapping[{n - 1}]: "), e
            refused += 1
finally:
    stop.set()
    racer.join()
print(f"calls={ok + refused} ok={ok} refused={refused}")
"""


def test_slot_changed_by_another_thread_never_crashes() -> None:
    """Issue 9.2: a second thread rewrites slots while gather/scatter run (GIL released).

    The launcher copies the slots once and checks and plans from the copy, so every call either
    moves data or raises ValueError naming the slot; it never copies from an unchecked address.
    Run in a subprocess: a crash there fails this test instead of killing the test session.
    Bounded: 8000 calls or 5 s, whichever comes first (the old double read crashed with SIGSEGV
    within 2-4 s here, 4 runs out of 4).
    """
    proc = subprocess.run(
        [sys.executable, "-c", _RACE_SCRIPT, "8000", "5"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
    found = re.search(r"calls=(\d+) ok=(\d+) refused=(\d+)", proc.stdout)
    assert found is not None, proc.stdout
    calls, ok, refused = map(int, found.groups())
    assert calls > 0 and ok + refused == calls, proc.stdout
