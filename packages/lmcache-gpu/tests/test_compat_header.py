"""gpu_compat.h, kv_index.h and the one GPU source compile both ways: nvcc (CUDA) and hipcc (HIP, gfx90a).

Needs nvcc and hipcc (Debian's ROCm 5.2, installed by ``make -C packages/lmcache-rocm deps``), not a
GPU; each missing compiler skips its half with that reason. ``compat_probe.cu`` uses every runtime
macro of the header; ``launcher.cu`` and ``runtime.cu`` are the very files both vendor packages
build; ``index_first.cu`` includes kv_index.h before any runtime header and calls its functions
from a kernel. Compile only (``-c``), one device target each, so a run takes seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmcache_core.include_path import get_include
from lmcache_gpu import get_source

HERE = Path(__file__).resolve().parent
CSRC = Path(get_source())
COMPAT = CSRC / "gpu_compat.h"
HIPCC_FLAGS = (
    "--offload-arch=gfx90a",
    "--rocm-path=/usr",
    "--hip-device-lib-path=/usr/lib/x86_64-linux-gnu/amdgcn/bitcode",
)


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (str(p) for p in sorted(Path("/usr/local").glob("cuda*/bin/nvcc")) if p.is_file()), None
    )


def _compile(
    kind: str, source: Path, out: Path, *defines: str, no_runtime_headers: bool = False
) -> subprocess.CompletedProcess[str]:
    """Compile ``source`` to an object; ``no_runtime_headers``: hipcc without HIP's headers (``-nogpuinc``)."""
    includes = ["-I", str(CSRC), "-I", get_include()]
    env = dict(os.environ)
    if kind == "cuda":
        nvcc = _nvcc()
        if nvcc is None:
            pytest.skip("nvcc not found (CUDA toolkit)")
        cmd = [nvcc, "-c", "-std=c++17", "-arch=sm_80", *includes, *defines, str(source), "-o", str(out)]
    else:
        hipcc = shutil.which("hipcc")
        if hipcc is None:
            pytest.skip("hipcc not found: make -C packages/lmcache-rocm deps installs Debian's hipcc")
        env["HIP_PLATFORM"] = "amd"  # hipcc would pick nvcc when it finds one
        cmd = [
            hipcc,
            "-c",
            "-std=c++17",
            *HIPCC_FLAGS,
            *(["-nogpuinc"] if no_runtime_headers else []),
            *includes,
            *defines,
            "-x",
            "hip",
            str(source),
            "-o",
            str(out),
        ]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("kind", ["cuda", "hip"])
def test_every_compat_macro_compiles(kind: str, tmp_path: Path) -> None:
    result = _compile(
        kind, HERE / "compat_probe.cu", tmp_path / "probe.o", f"-DEXPECT_HIP={int(kind == 'hip')}"
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "probe.o").stat().st_size > 0


@pytest.mark.parametrize("kind", ["cuda", "hip"])
def test_the_wrong_expectation_fails(kind: str, tmp_path: Path) -> None:
    """The static_assert is live: each compiler really selects its own runtime."""
    result = _compile(
        kind, HERE / "compat_probe.cu", tmp_path / "probe.o", f"-DEXPECT_HIP={int(kind != 'hip')}"
    )
    assert result.returncode != 0 and "picked the wrong runtime" in result.stderr


@pytest.mark.parametrize("source", ["launcher.cu", "runtime.cu"])
@pytest.mark.parametrize("kind", ["cuda", "hip"])
def test_the_device_sources_compile_as_both(kind: str, source: str, tmp_path: Path) -> None:
    result = _compile(kind, CSRC / source, tmp_path / "out.o")
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.parametrize("kind", ["cuda", "hip"])
def test_kv_index_marks_its_functions_for_the_device_without_a_runtime_header(
    kind: str, tmp_path: Path
) -> None:
    """kv_index.h included first (HIP: with no runtime header at all): its functions run in a kernel.

    Calling a host-only function from a kernel is a compile error, so this fails when kv_index.h
    does not detect the device compile by itself.
    """
    bare = kind == "hip"
    defines = ("-DLMC_TEST_NO_RUNTIME_HEADERS",) if bare else ()
    result = _compile(kind, HERE / "index_first.cu", tmp_path / "index.o", *defines, no_runtime_headers=bare)
    assert result.returncode == 0, result.stderr[-4000:]


def test_runtime_names_appear_only_in_the_compat_header() -> None:
    """Every cudaXxx / hipXxx spelling lives in gpu_compat.h; the rest of the source uses LMC_ macros."""
    offenders = []
    for path in sorted(CSRC.iterdir()):
        if path == COMPAT or path.suffix not in (".h", ".cuh", ".cu", ".cpp"):
            continue
        code = re.sub(r"/\*.*?\*/|//[^\n]*", "", path.read_text(), flags=re.S)
        for name in re.findall(r"\b(?:cuda|hip)[A-Z]\w*", code):
            offenders.append(f"{path.name}: {name}")
    assert offenders == []


def test_every_runtime_macro_is_exercised() -> None:
    """compat_probe.cu names every LMC_ macro the header defines (but the selection helpers)."""
    defined = set(re.findall(r"#define (LMC_\w+)", COMPAT.read_text()))
    probe = (HERE / "compat_probe.cu").read_text()
    internal = {"LMC_IS_HIP", "LMC_POINTER_ATTR_TYPE", "LMC_MEMORY_TYPE_HOST", "LMC_POINTER_GET_ATTRIBUTES",
                "LMC_POINTER_ATTR_T", "LMCACHE_GPU_COMPAT_H_"}  # fmt: skip
    missing = sorted(m for m in defined - internal if m not in probe)
    assert missing == []
