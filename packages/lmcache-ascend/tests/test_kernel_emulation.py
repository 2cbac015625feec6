"""The AscendC kernel's logic on the CPU: kv_ascend_logic.h over host_primitives.h, cores run serially.

Needs g++, not an NPU or CANN. ``emulate_ascend.cpp`` runs the very kernel body, packed argument
table (:func:`lmcache_ascend.kernel_args.pack`) and host checks (``ascend_checks.h``) of the NPU
build; only AscendC's copy primitives are replaced by memcpy. Each result is compared bit for bit
with the reference backend: every NPU layout variant in every dtype, plus every other registry
layout variant, -1 holes, skip_prefix, one core and several (rows striding over cores). It proves
the index math and the work split, not AscendC's DataCopyPad or the NPU's memory system (the NPU
tests in test_npu_*.py do that on an Ascend host).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from lmcache_ascend.kernel_args import HEADER, pack
from lmcache_ascend.layouts import NPU_LAYOUTS
from lmcache_core.backend import reference_backend
from lmcache_core.include_path import get_include
from lmcache_core.layout import KVLayout
from lmcache_core.native_args import native_layout
from lmcache_core.testing.cases import LAYOUT_VARIANTS, Case, bits, float_dtypes, make_cases, poison_

HERE = Path(__file__).resolve().parent
CSRC = HERE.parent / "csrc"
NPU_VARIANTS = tuple(v for v in LAYOUT_VARIANTS if v.kind in NPU_LAYOUTS)
OTHER_VARIANTS = tuple(v for v in LAYOUT_VARIANTS if v.kind not in NPU_LAYOUTS)
# enough cases per NPU variant that the dtype rotation reaches every dtype (checked below)
NPU_CASES = make_cases(seed=14, count=2 * len(float_dtypes()), variants=NPU_VARIANTS)
OTHER_CASES = make_cases(seed=14, count=2, variants=OTHER_VARIANTS)
CASES = NPU_CASES + OTHER_CASES
_P = ctypes.POINTER


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("g++ not found")
    lib = tmp_path_factory.mktemp("emulator") / "libemulate_ascend.so"
    cmd = [
        cxx, "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Wextra", "-Werror",
        "-I", str(CSRC), "-I", get_include(), str(HERE / "emulate_ascend.cpp"), "-o", str(lib),
    ]  # fmt: skip
    built = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-4000:]
    dll = ctypes.CDLL(str(lib))
    fn = dll.lmc_ascend_emulate
    fn.restype = ctypes.c_char_p
    i64 = _P(ctypes.c_int64)
    fn.argtypes = [i64, ctypes.c_int64, i64, i64, ctypes.c_int64, ctypes.c_uint64, ctypes.c_int64,
                   ctypes.c_int64, i64]  # fmt: skip
    return dll


def _arr(values: Sequence[int]) -> ctypes.Array:  # type: ignore[type-arg]
    return (ctypes.c_int64 * max(1, len(values)))(*values)


def emulate(
    dll: ctypes.CDLL,
    gather: bool,
    layout: KVLayout,
    kv: Sequence[torch.Tensor],
    slots: torch.Tensor,
    chunk: torch.Tensor,
    skip_prefix: int,
    cores: int = 8,
    args: list[int] | None = None,
) -> int:
    """Run the kernel logic on ``cores`` emulated cores; returns the primitive copies it made."""
    native = native_layout(layout, kv)
    if args is None:
        args = pack(native, gather=gather, num_tokens=slots.numel(), skip_prefix=skip_prefix)
    copies = ctypes.c_int64(0)
    slots = slots.contiguous()
    err = dll.lmc_ascend_emulate(
        _arr(args),
        len(args),
        _arr(native.tensor_nbytes),
        ctypes.cast(slots.data_ptr(), _P(ctypes.c_int64)),
        slots.numel(),
        chunk.data_ptr(),
        chunk.numel() * chunk.element_size(),
        cores,
        ctypes.byref(copies),
    )
    if err is not None:
        raise ValueError(err.decode())
    return copies.value


def _poisoned_chunk(case: Case) -> torch.Tensor:
    return poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))


def test_every_npu_layout_variant_meets_every_dtype() -> None:
    drawn = {(c.kind, c.variant, c.head_size_v is not None, c.dtype) for c in NPU_CASES}
    wanted = {(v.kind, v.variant, v.unequal_v, d) for v in NPU_VARIANTS for d in float_dtypes()}
    assert {(k, v, u, d) for k, v, u, d in drawn} >= wanted, sorted(map(str, wanted - drawn))


@pytest.mark.parametrize("cores", [1, 7], ids=["1core", "7cores"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_gather_matches_the_reference(emulator: ctypes.CDLL, case: Case, cores: int) -> None:
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    out = _poisoned_chunk(case)
    emulate(emulator, True, layout, kv, slots, out, case.skip_prefix, cores)
    expected = _poisoned_chunk(case)
    reference_backend().gather(layout, kv, slots, expected, case.skip_prefix)
    assert torch.equal(bits(out), bits(expected)), case.describe()


@pytest.mark.parametrize("cores", [1, 7], ids=["1core", "7cores"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_scatter_matches_the_reference(emulator: ctypes.CDLL, case: Case, cores: int) -> None:
    kv, layout = case.poisoned_kv()
    expected = [t.clone() for t in kv]
    slots = case.slot_tensor(unique=True)
    src = case.random_chunk()
    emulate(emulator, False, layout, kv, slots, src, case.skip_prefix, cores)
    reference_backend().scatter(layout, expected, slots, src.clone(), case.skip_prefix)
    for i, (t, e) in enumerate(zip(kv, expected, strict=True)):
        assert torch.equal(bits(t), bits(e)), f"kv_caches[{i}]: {case.describe()}"


def _mla_case() -> Case:
    return next(c for c in NPU_CASES if c.kind == "vllm_ascend_mla" and c.num_tokens > c.skip_prefix + 1)


def test_whole_rows_move_in_one_copy_each(emulator: ctypes.CDLL) -> None:
    """vllm_ascend_mla rows (one head, contiguous channels) are one primitive copy per plane and token."""
    case = _mla_case()
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    live = sum(1 for s in slots[case.skip_prefix :].tolist() if s >= 0)
    copies = emulate(emulator, True, layout, kv, slots, _poisoned_chunk(case), case.skip_prefix)
    assert copies == live * layout.num_planes


def test_a_bad_slot_is_refused_before_a_byte_moves(emulator: ctypes.CDLL) -> None:
    case = _mla_case()
    kv, layout = case.poisoned_kv()
    before = [t.clone() for t in kv]
    slots = case.slot_tensor(unique=True)
    slots[-1] = layout.num_slots  # one past the last slot
    with pytest.raises(ValueError, match="slot_mapping"):
        emulate(emulator, False, layout, kv, slots, case.random_chunk(), case.skip_prefix)
    assert all(torch.equal(bits(t), bits(b)) for t, b in zip(kv, before, strict=True))


def test_a_plane_past_its_tensor_is_refused(emulator: ctypes.CDLL) -> None:
    case = _mla_case()
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    args = pack(
        native_layout(layout, kv), gather=True, num_tokens=slots.numel(), skip_prefix=case.skip_prefix
    )
    planes = layout.num_planes
    args[HEADER + len(kv) + planes] = 1 << 40  # plane 0's offset, far past its tensor
    with pytest.raises(ValueError, match="plane"):
        emulate(emulator, True, layout, kv, slots, _poisoned_chunk(case), case.skip_prefix, args=args)


def test_a_foreign_table_is_refused(emulator: ctypes.CDLL) -> None:
    case = _mla_case()
    kv, layout = case.random_kv()
    slots = case.slot_tensor()
    args = pack(
        native_layout(layout, kv), gather=True, num_tokens=slots.numel(), skip_prefix=case.skip_prefix
    )
    args[0] = 0
    with pytest.raises(ValueError, match="LMCASC01"):
        emulate(emulator, True, layout, kv, slots, _poisoned_chunk(case), case.skip_prefix, args=args)
