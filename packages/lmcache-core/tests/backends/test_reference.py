"""Reference-backend specifics: bit exactness on special values, fp8, empty work, device hooks."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.backends import reference
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import LAYOUT_KINDS, allocate_example, detect_layout, flatten_kv_caches
from lmcache_core.plugin_api import API_VERSION

L, NB, BS, H, D = 2, 3, 4, 2, 3  # 12 slots, hidden 6

#: Bit patterns a float copy could change: NaNs with payloads (quiet, signalling, negative),
#: infinities, -0 and subnormals. Width -> patterns (as unsigned ints).
SPECIAL_BITS = {
    torch.float32: [0x7FC00001, 0x7F800001, 0xFFBFFFFF, 0x7F800000, 0x80000000, 0x00000001, 0x807FFFFF],
    torch.float16: [0x7E01, 0x7C01, 0xFE55, 0x7C00, 0x8000, 0x0001, 0x83FF],
    torch.bfloat16: [0x7FC1, 0x7F81, 0xFFAA, 0x7F80, 0x8000, 0x0001, 0x807F],
    torch.float8_e4m3fn: [0x7F, 0xFF, 0x80, 0x01, 0x87, 0x7E],
    torch.float8_e5m2: [0x7D, 0x7E, 0xFF, 0x7C, 0x80, 0x01, 0x83],
}
_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def as_int(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT[t.element_size()])


def signed(value: int, width: int) -> int:
    return value - (1 << (8 * width)) if width > 1 and value >= 1 << (8 * width - 1) else value


def nhd(dtype: torch.dtype) -> tuple[list[torch.Tensor], KVLayout]:
    tensors, hints = allocate_example(
        "vllm_flash_nhd", num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=H, head_size=D, dtype=dtype
    )
    for t in tensors:
        as_int(t).zero_()
    return tensors, detect_layout(tensors, hints)


@pytest.mark.parametrize("dtype", list(SPECIAL_BITS), ids=lambda d: str(d).removeprefix("torch."))
def test_special_values_survive_gather_and_scatter(dtype: torch.dtype) -> None:
    kv, layout = nhd(dtype)
    width = dtype.itemsize
    patterns = [signed(p, width) for p in SPECIAL_BITS[dtype]]
    vals = torch.tensor((patterns * 8)[: H * D], dtype=_INT[width])
    # token slots 5 and 9: every (kv, layer) row gets the patterns, rolled so planes differ
    for kv_i in range(2):
        for layer in range(L):
            roll = kv_i * L + layer
            as_int(kv[layer])[kv_i, 1, 1] = vals.roll(roll).view(H, D)
            as_int(kv[layer])[kv_i, 2, 1] = vals.roll(roll + 1).view(H, D)
    slots = torch.tensor([5, 9], dtype=torch.int64)
    out = torch.empty(2, L, 2, H * D, dtype=dtype)
    reference_backend().gather(layout, kv, slots, out)
    for kv_i in range(2):
        for layer in range(L):
            roll = kv_i * L + layer
            assert as_int(out)[kv_i, layer, 0].tolist() == vals.roll(roll).tolist()
            assert as_int(out)[kv_i, layer, 1].tolist() == vals.roll(roll + 1).tolist()
    back, _ = nhd(dtype)
    reference_backend().scatter(layout, back, slots, out)
    for a, b in zip(back, kv, strict=True):
        assert torch.equal(as_int(a), as_int(b))


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
@pytest.mark.parametrize("kind", sorted(LAYOUT_KINDS))
def test_fp8_every_layout(kind: str, dtype: torch.dtype) -> None:
    """fp8 has no indexing kernels in many torch builds: the reference must move it as bytes."""
    if kind == "vllm_cpu_bfmmla":
        pytest.skip("vllm_cpu_bfmmla holds bf16 only")
    heads, size = (1, 16) if LAYOUT_KINDS[kind].mla else (H, D)
    blocks, bs = (NB * BS, 1) if kind == "sglang" else (NB, BS)
    if kind == "vllm_cpu_amx":  # tiles of 16 tokens and 16 channels
        blocks, bs, size = 1, 16, 16
    tensors, hints = allocate_example(
        kind, num_layers=L, num_blocks=blocks, block_size=bs, num_kv_heads=heads, head_size=size, dtype=dtype
    )
    flat = flatten_kv_caches(tensors)
    gen = torch.Generator().manual_seed(3)
    for t in flat:
        as_int(t).copy_(torch.randint(0, 256, t.shape, dtype=torch.uint8, generator=gen))
    layout = detect_layout(tensors, hints)
    slots = torch.tensor([7, -1, 0, 11, 3], dtype=torch.int64)
    fmt = layout.chunk_format
    out = torch.zeros(fmt.nbytes(5), dtype=torch.uint8)
    reference_backend().gather(layout, flat, slots, out)
    sections = fmt.views(out, 5)
    assert not any(bool(as_int(s)[:, 1].any()) for s in sections)  # the -1 token's rows stay as they were
    fresh = [torch.zeros_like(t) for t in flat]
    reference_backend().scatter(layout, fresh, slots, out)
    again = torch.zeros_like(out)
    reference_backend().gather(layout, fresh, slots, again)
    assert torch.equal(again, out)
    # nothing but the four live slots was written: the non-zero bytes are exactly the chunk's
    written = sum(int((as_int(f) != 0).sum()) for f in fresh)
    assert written == sum(int((as_int(s)[:, [0, 2, 3, 4]] != 0).sum()) for s in sections)


def test_empty_chunk_and_nothing_to_move() -> None:
    kv, layout = nhd(torch.float32)
    for t in kv:
        t.normal_()
    before = [t.clone() for t in kv]
    ref = reference_backend()
    empty = torch.empty(2, L, 0, H * D)
    ref.gather(layout, kv, torch.empty(0, dtype=torch.int64), empty)
    ref.scatter(layout, kv, torch.empty(0, dtype=torch.int64), empty)
    out = torch.full((2, L, 3, H * D), 5.0)
    src = torch.full((2, L, 3, H * D), 9.0)
    for slots, skip in (([-1, -1, -1], 0), ([1, 2, 3], 3), ([4, -1, -1], 1)):
        slot_t = torch.tensor(slots, dtype=torch.int64)
        ref.gather(layout, kv, slot_t, out, skip)
        ref.scatter(layout, kv, slot_t, src, skip)
    assert bool((out == 5.0).all())
    for a, b in zip(kv, before, strict=True):
        assert torch.equal(a, b)


def test_repeated_slot_gathers_the_same_row() -> None:
    kv, layout = nhd(torch.float32)
    for t in kv:
        t.normal_()
    out = torch.empty(2, L, 3, H * D)
    reference_backend().gather(layout, kv, torch.tensor([6, 6, 2]), out)
    assert torch.equal(out[:, :, 0], out[:, :, 1])
    assert torch.equal(out[1, 1, 2], kv[1][1, 0, 2].reshape(-1))


def test_non_contiguous_slot_mapping() -> None:
    """A strided slot_mapping view is read by value, not by memory."""
    kv, layout = nhd(torch.float32)
    for t in kv:
        t.normal_()
    slots = torch.tensor([[3, 0], [7, 0], [-1, 0]], dtype=torch.int64)[:, 0]
    out = torch.zeros(2, L, 3, H * D)
    reference_backend().gather(layout, kv, slots, out)
    assert torch.equal(out[0, 0, 1], kv[0][0, 1, 3].reshape(-1))
    assert not bool(out[:, :, 2].any())


def test_identity_and_capabilities() -> None:
    backend = reference_backend()
    assert backend is reference_backend()
    assert backend.name == "reference" and backend.reference is None
    assert reference.lmcache_api_version() == API_VERSION
    caps = backend.capabilities
    assert caps.pinned_host == reference._accelerator_available()
    for kind in LAYOUT_KINDS:
        for dtype in ("float16", "bfloat16", "float32", "float8_e4m3fn", "float8_e5m2"):
            assert caps.covers(kind, dtype)
    _, layout = nhd(torch.float16)
    assert backend.handles(layout) and backend.kernel_name(layout) == "reference"


@pytest.mark.parametrize("nbytes", [0, 1, 4096, 3 * 1024 * 1024 + 7])
@pytest.mark.parametrize("pinned", [True, False])
def test_alloc_host(nbytes: int, pinned: bool) -> None:
    buf = reference_backend().alloc_host(nbytes, pinned=pinned)
    assert (buf.dtype, tuple(buf.shape), buf.device.type) == (torch.uint8, (nbytes,), "cpu")
    assert buf.is_pinned() == (pinned and reference._accelerator_available())
    if nbytes:
        buf.fill_(0xA5)
        view = buf[: nbytes // 4 * 4].view(torch.float32)  # chunks are carved from it by dtype view
        assert view.numel() == nbytes // 4


def test_streams_events_synchronize() -> None:
    backend = reference_backend()
    stream = backend.new_stream(torch.device("cpu"))
    assert stream == 0  # the reference runs on the current stream
    event = backend.record_event(stream)
    backend.synchronize(event)
    backend.synchronize(stream)
    backend.synchronize()
    assert backend.new_stream() == 0


# ---- called directly: every check before the first byte ---------------------------------------


def _last_plane_out_of_its_tensor(layout: KVLayout) -> KVLayout:
    """The last plane (V of the last layer) moved one block past its tensor's end; the others fit."""
    offsets = (*layout.plane_offset[:-1], layout.plane_offset[-1] + layout.block_stride)
    return dataclasses.replace(layout, plane_offset=offsets)


@pytest.mark.parametrize("skip_prefix", [0, 1], ids=["whole", "skip-prefix"])
def test_failing_later_plane_leaves_out_untouched(skip_prefix: int) -> None:
    """Issue 9.3: the hook used to copy the first planes, then raise on the last one. Through
    ``Backend`` the layout check names the plane; nothing is written."""
    kv, layout = nhd(torch.float16)
    for i, t in enumerate(kv):
        as_int(t).copy_(torch.arange(t.numel(), dtype=torch.int16).view(t.shape) + i)
    bad = _last_plane_out_of_its_tensor(layout)
    slots = torch.tensor([0, 5, -1, 11], dtype=torch.int64)
    out = torch.full((2, L, 4, H * D), 3.0, dtype=torch.float16)
    before = out.clone()
    with pytest.raises(
        ValueError, match=rf"^plane_offset\[{2 * L - 1}\]: plane {2 * L - 1} \(kind v, layer {L - 1}\)"
    ):
        reference_backend().gather(bad, kv, slots, out, skip_prefix)
    assert torch.equal(as_int(out), as_int(before))


@pytest.mark.parametrize("hook", ["lmcache_gather", "lmcache_scatter"])
def test_hook_builds_every_view_before_the_first_copy(hook: str) -> None:
    """The hooks do not validate again, yet a plane outside its storage still writes nothing:
    every plane's view is built (and refused by torch) before the first copy."""
    kv, layout = nhd(torch.float16)
    before = [t.clone() for t in kv]
    bad = _last_plane_out_of_its_tensor(layout)
    chunk = torch.full((2, L, 2, H * D), 3.0, dtype=torch.float16)
    chunk_before = chunk.clone()
    name = "out" if hook == "lmcache_gather" else "src"
    with pytest.raises(RuntimeError, match="out of bounds for storage"):
        getattr(reference, hook)(
            layout=bad,
            kv_caches=kv,
            slot_mapping=torch.tensor([0, 7]),
            skip_prefix=0,
            stream=0,
            **{name: chunk},
        )
    for t, b in zip(kv, before, strict=True):
        assert torch.equal(as_int(t), as_int(b))
    assert torch.equal(as_int(chunk), as_int(chunk_before))


def test_backend_checks_slots_before_writing() -> None:
    """A bad slot at the end of the mapping: nothing written to the KV, ValueError naming it."""
    kv, layout = nhd(torch.float16)
    before = [t.clone() for t in kv]
    src = torch.full((2, L, 3, H * D), 3.0, dtype=torch.float16)
    with pytest.raises(ValueError, match=r"slot_mapping\[2\]: expected slots in \[-1, 12\)"):
        reference_backend().scatter(layout, kv, torch.tensor([0, 1, 12]), src)
    for t, b in zip(kv, before, strict=True):
        assert torch.equal(as_int(t), as_int(b))


@pytest.mark.parametrize("op", ["gather", "scatter"])
def test_backend_validates_once(op: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11.4: one full validation per call through ``Backend`` (the slot pass is the costly
    part), none in the reference's hooks."""
    from lmcache_core import validation

    passes: list[int] = []
    real = validation.check_slot_mapping

    def counting(*args: object, **kwargs: object) -> None:
        passes.append(1)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(validation, "check_slot_mapping", counting)
    kv, layout = nhd(torch.float16)
    chunk = torch.zeros((2, L, 3, H * D), dtype=torch.float16)
    getattr(reference_backend(), op)(layout, kv, torch.tensor([0, 1, 11]), chunk)
    assert passes == [1]
