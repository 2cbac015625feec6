"""lmcache-rocm builds from its own sdist outside the monorepo (issue 11).

``make -C packages/lmcache-rocm sdist-check`` writes the sdist through the PEP 517 hook and has pip
build a wheel from it in an empty directory: the unpacked sdist finds the GPU source only through
the installed lmcache-gpu (``lmcache_gpu.get_cmake_dir()``), and kv_index.h through lmcache-core.
Needs Debian's hipcc and the CMake the Makefile installs (``make -C packages/lmcache-rocm deps``),
no GPU. Compiles the HIP source once for gfx90a (about a minute on two cores).
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

import pytest

ROCM = Path(__file__).resolve().parents[1]


def test_the_sdist_builds_a_wheel_in_an_empty_directory(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("make not found")
    run = subprocess.run(
        ["make", "-s", "-C", str(ROCM), "sdist-check", f"SDIST_DIR={tmp_path}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout + run.stderr)[-6000:]
    (sdist,) = (tmp_path / "sdist").glob("lmcache_rocm-*.tar.gz")
    with tarfile.open(sdist) as tar:
        members = tar.getmembers()
    names = [m.name.split("/", 1)[1] for m in members if "/" in m.name]
    assert "CMakeLists.txt" in names and "src/lmcache_rocm/probe.py" in names
    assert not [n for n in names if n.endswith((".cu", ".cuh", ".cpp", ".h"))], (
        "GPU source copied into the sdist"
    )
    assert not [m.name for m in members if m.issym() or m.islnk()]
    assert not [n for n in names if n.startswith("build/")]
    (wheel,) = (tmp_path / "wheel").glob("lmcache_rocm-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        files = whl.namelist()
        (so,) = [f for f in files if f.startswith("lmcache_rocm/_C") and f.endswith(".so")]
        assert b"amdgcn-amd-amdhsa--gfx90a" in whl.read(so), "no gfx90a code object in the wheel's extension"
        build_info = whl.read("lmcache_rocm/_build_info.py").decode()
    assert 'RUNTIME = "HIP"' in build_info and '("gfx90a",)' in build_info
    assert {"lmcache_rocm/probe.py", "lmcache_rocm/plugin.py", "lmcache_rocm/kernels.py"} <= set(files)
