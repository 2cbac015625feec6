"""lmcache-rocm holds no GPU source and no shared Python: it compiles lmcache-gpu's source as HIP.

Needs only the checkout and the installed lmcache-gpu: reads files, compiles nothing (the HIP build
itself is ``make install`` and ``test_sdist_build.py``).
"""

from __future__ import annotations

from pathlib import Path

import lmcache_gpu

ROCM = Path(__file__).resolve().parents[1]


def _own_files() -> list[Path]:
    return [p for p in ROCM.rglob("*") if "build" not in p.relative_to(ROCM).parts]


def test_no_native_source_and_no_links_in_this_package() -> None:
    own = _own_files()
    assert [p for p in own if p.suffix in (".cu", ".cuh", ".cpp", ".h", ".hip")] == []
    assert [p for p in own if p.is_symlink()] == []


def test_the_build_finds_the_source_through_the_installed_lmcache_gpu() -> None:
    cmake = (ROCM / "CMakeLists.txt").read_text()
    assert "import lmcache_gpu; print(lmcache_gpu.get_cmake_dir())" in cmake
    assert "find_package(lmcache_gpu CONFIG REQUIRED" in cmake
    assert "lmcache_gpu_add_extension(_C HIP rocm" in cmake
    assert "../" not in cmake, "a relative path out of this package"
    config = Path(lmcache_gpu.get_cmake_dir()) / "lmcache_gpuConfig.cmake"
    assert config.is_file() and (Path(lmcache_gpu.get_source()) / "launcher.cu").is_file()


def test_the_python_modules_are_this_vendors_own() -> None:
    """Probe, plugin and kernels only; the shared code is imported from lmcache_gpu."""
    modules = sorted(p.name for p in (ROCM / "src" / "lmcache_rocm").glob("*.py"))
    assert modules == ["__init__.py", "kernels.py", "plugin.py", "probe.py"]
