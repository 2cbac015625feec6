"""The GPU kernel's body on the CPU: kv_transfer.cuh built by g++ (LMC_HOST_EMULATION), grid walked serially.

Needs g++, not a GPU. ``emulate_kernel.cpp`` runs the very kernel template, checks, pointer table,
vector-width plan and launch geometry that ``launcher.cu`` uses (from ``lmcache_gpu.get_source()``), on host tensors; each result is
compared bit for bit with the reference backend over the conformance cases (every layout variant,
every dtype, odd head sizes, -1 holes, skip_prefix), with aligned and deliberately misaligned
chunks (narrow accesses), and several chunks per launch. It proves the index math and the
batching, not GPU memory behaviour (the vendors' ``KernelTests`` on a GPU do that).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.include_path import get_include
from lmcache_core.layout import KVLayout
from lmcache_core.native_args import native_layout
from lmcache_core.testing.cases import Case, bits, make_cases, poison_
from lmcache_gpu import get_source

HERE = Path(__file__).resolve().parent
CSRC = Path(get_source())
CASES = make_cases(seed=11, count=6)

_P = ctypes.POINTER


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found")
    lib = tmp_path_factory.mktemp("emulator") / "libemulate.so"
    cmd = [
        cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Werror", "-DLMC_HOST_EMULATION",
        "-I", str(CSRC), "-I", get_include(), str(HERE / "emulate_kernel.cpp"), str(CSRC / "plan.cpp"), "-o", str(lib),
    ]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    dll = ctypes.CDLL(str(lib))
    fn = dll.lmc_emulate_transfer
    fn.restype = ctypes.c_char_p
    u, i64 = _P(ctypes.c_uint64), _P(ctypes.c_int64)
    fn.argtypes = [ctypes.c_int, u, i64, ctypes.c_int64, i64, i64, ctypes.c_int64, i64, i64,
                   ctypes.c_int64, u, i64, i64, u, i64, ctypes.c_int64, _P(ctypes.c_int), _P(ctypes.c_int)]  # fmt: skip
    return dll


def _arr(ctype: type, values: Sequence[int]) -> ctypes.Array:  # type: ignore[type-arg]
    return (ctype * max(1, len(values)))(*values)


def emulate(
    dll: ctypes.CDLL,
    gather: bool,
    layout: KVLayout,
    kv: Sequence[torch.Tensor],
    jobs: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
    max_blocks: int = 65535,
) -> tuple[int, int]:
    """Run the kernel over ``jobs`` of (slot_mapping, chunk, skip_prefix); (vector bytes, launches).

    ``max_blocks`` caps the grid's x dimension as launcher.cu does at 65535; 1 makes each thread
    group stride over many rows.
    """
    u64, i64 = ctypes.c_uint64, ctypes.c_int64
    width, launches = ctypes.c_int(0), ctypes.c_int(0)
    p = native_layout(layout, kv)
    err = dll.lmc_emulate_transfer(
        int(gather),
        _arr(u64, p.tensor_address),
        _arr(i64, p.tensor_nbytes),
        len(kv),
        _arr(i64, p.plane_tensor),
        _arr(i64, p.plane_offset),
        len(p.plane_tensor),
        _arr(i64, p.dims),
        _arr(i64, [v for kind in p.kinds for v in kind]),
        len(jobs),
        _arr(u64, [s.data_ptr() for s, _, _ in jobs]),
        _arr(i64, [s.numel() for s, _, _ in jobs]),
        _arr(i64, [k for _, _, k in jobs]),
        _arr(u64, [c.data_ptr() for _, c, _ in jobs]),
        _arr(i64, [c.numel() * c.element_size() for _, c, _ in jobs]),
        max_blocks,
        ctypes.byref(width),
        ctypes.byref(launches),
    )
    if err is not None:
        raise ValueError(err.decode())
    return width.value, launches.value


def _chunk(case: Case, misalign: bool) -> torch.Tensor:
    """A poisoned chunk (typed, or uint8 bytes when the plane kinds differ: :meth:`Case.chunk_shape`);
    ``misalign`` puts it one element past a 16-byte boundary."""
    dtype = case.chunk_dtype
    n = int(torch.Size(case.chunk_shape()).numel())
    base = torch.empty(n + 16, dtype=dtype)
    shift = (-base.data_ptr() % 16) // dtype.itemsize + (1 if misalign else 0)
    return poison_(base[shift : shift + n].view(case.chunk_shape()))


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gather_matches_the_reference(emulator: ctypes.CDLL, case: Case, misalign: bool) -> None:
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    out = _chunk(case, misalign)
    # misaligned runs also cap the grid at one block: every thread group strides over rows
    width, _ = emulate(emulator, True, layout, kv, [(slots, out, case.skip_prefix)], 1 if misalign else 65535)
    if misalign and case.num_tokens > case.skip_prefix:  # the chunk is planned only when tokens move
        assert width <= case.dtype.itemsize
    expected = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    reference_backend().gather(layout, kv, slots, expected, case.skip_prefix)
    assert torch.equal(bits(out), bits(expected)), f"{width}-byte accesses: {case.describe()}"


@pytest.mark.parametrize("misalign", [False, True], ids=["aligned", "misaligned"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scatter_matches_the_reference(emulator: ctypes.CDLL, case: Case, misalign: bool) -> None:
    kv, layout = case.poisoned_kv()
    expected = [t.clone() for t in kv]
    slots = case.slot_tensor(unique=True)
    src = _chunk(case, misalign).copy_(case.random_chunk())
    emulate(emulator, False, layout, kv, [(slots, src, case.skip_prefix)], 1 if misalign else 65535)
    reference_backend().scatter(layout, expected, slots, src.clone(), case.skip_prefix)
    for i, (t, e) in enumerate(zip(kv, expected, strict=True)):
        assert torch.equal(bits(t), bits(e)), f"kv_caches[{i}]: {case.describe()}"


def test_every_vector_width_is_exercised(emulator: ctypes.CDLL) -> None:
    widths = set()
    for case in CASES:
        kv, layout = case.random_kv()
        if case.num_tokens == case.skip_prefix:
            continue
        for misalign in (False, True):
            job = (case.slot_tensor(), _chunk(case, misalign), case.skip_prefix)
            widths.add(emulate(emulator, True, layout, kv, [job])[0])
    assert widths == {1, 2, 4, 8, 16}


@pytest.mark.parametrize("count", [5, 70])  # 70 chunks: three launches of at most 32
def test_many_chunks_in_one_transfer(emulator: ctypes.CDLL, count: int) -> None:
    case = next(c for c in CASES if c.kind == "vllm_flash_hnd" and c.block_size > 1)
    kv, layout = case.random_kv()
    gen = torch.Generator().manual_seed(count)
    jobs, ref = [], reference_backend()
    for i in range(count):
        n = 1 + i % 7
        slots = torch.randint(-1, layout.num_slots, (n,), generator=gen)
        jobs.append((slots, _chunk(case_with_tokens(case, n), misalign=False), i % 3 if i % 3 < n else 0))
    _, launches = emulate(emulator, True, layout, kv, jobs)
    assert launches == -(-sum(1 for s, _, k in jobs if s.numel() > k) // 32)
    for slots, chunk, skip in jobs:
        expected = poison_(torch.empty_like(chunk))
        ref.gather(layout, kv, slots, expected, skip)
        assert torch.equal(bits(chunk), bits(expected))


def case_with_tokens(case: Case, num_tokens: int) -> Case:
    from dataclasses import replace

    return replace(case, slot_mapping=tuple(range(num_tokens)), skip_prefix=0)


def test_bad_slot_is_refused_before_the_kernel(emulator: ctypes.CDLL) -> None:
    case = next(c for c in CASES if c.kind == "mla")
    kv, layout = case.random_kv()
    before = [t.clone() for t in kv]
    slots = torch.zeros(case.num_tokens, dtype=torch.int64)
    slots[-1] = layout.num_slots
    out = _chunk(case, misalign=False)
    with pytest.raises(
        ValueError, match=rf"slot_mapping\[{case.num_tokens - 1}\]: .*given {layout.num_slots}"
    ):
        emulate(emulator, True, layout, kv, [(slots, out, 0)])
    with pytest.raises(ValueError, match=rf"slot_mapping\[{case.num_tokens - 1}\]"):
        emulate(emulator, False, layout, kv, [(slots, out, 0)])
    assert all(torch.equal(bits(t), bits(b)) for t, b in zip(kv, before, strict=True))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float8_e5m2])
def test_strided_channels_move_element_by_element(emulator: ctypes.CDLL, dtype: torch.dtype) -> None:
    """Every other channel of a wider tensor (channel stride 2): runs of one element, no registry kind has it."""
    from lmcache_core.layout_registry import LayoutHints, detect_layout
    from lmcache_core.testing.cases import random_bits_

    gen = torch.Generator().manual_seed(3)
    kv = [random_bits_(torch.empty(2, 4, 16, 3, 10, dtype=dtype), gen)[..., ::2] for _ in range(2)]
    hints = LayoutHints(kind="vllm_flash_nhd", num_kv_heads=3, head_size=5, block_size=16, num_layers=2)
    layout = detect_layout(kv, hints)
    assert layout.contiguous_run() == 1
    slots = torch.tensor([5, 6, -1, 40, 63, 17, 0], dtype=torch.int64)
    out = poison_(torch.empty(layout.chunk_format.shape(slots.numel()), dtype=dtype))
    width, _ = emulate(emulator, True, layout, kv, [(slots, out, 1)])
    assert width == dtype.itemsize
    expected = poison_(torch.empty_like(out))
    reference_backend().gather(layout, kv, slots, expected, 1)
    assert torch.equal(bits(out), bits(expected))
    # scatter into poisoned views; compare the whole underlying tensors (the skipped channels too)
    bases = [poison_(torch.empty(2, 4, 16, 3, 10, dtype=dtype)) for _ in range(4)]
    mine, theirs = [b[..., ::2] for b in bases[:2]], [b[..., ::2] for b in bases[2:]]
    emulate(emulator, False, detect_layout(mine, hints), mine, [(slots, expected, 1)])
    reference_backend().scatter(detect_layout(theirs, hints), theirs, slots, expected, 1)
    for got, want in zip(bases[:2], bases[2:], strict=True):
        assert torch.equal(bits(got), bits(want))
