"""lmcache-rocm holds no second copy of the GPU source: it compiles lmcache-cuda's as HIP.

Needs only the checkout: reads files, compiles nothing (the HIP build itself is ``make install``,
and ``packages/lmcache-cuda/tests/test_compat_header.py`` compiles the source both ways).
"""

from __future__ import annotations

import re
from pathlib import Path

ROCM = Path(__file__).resolve().parents[1]
CUDA = ROCM.parent / "lmcache-cuda"


def test_no_native_source_in_this_package() -> None:
    sources = [
        p
        for p in ROCM.rglob("*")
        if p.suffix in (".cu", ".cuh", ".cpp", ".h", ".hip") and "build" not in p.parts
    ]
    assert sources == []


def test_the_build_compiles_the_cuda_packages_launcher_as_hip() -> None:
    cmake = ROCM.joinpath("CMakeLists.txt").read_text()
    assert re.search(
        r'set_source_files_properties\("\$\{GPU_SRC\}/launcher\.cu" PROPERTIES LANGUAGE HIP\)', cmake
    )
    assert 'set(GPU_SRC "${LMCACHE_CUDA_SOURCE_DIR}/csrc")' in cmake
    assert "LINKER_LANGUAGE CXX" in cmake
    assert (CUDA / "csrc" / "launcher.cu").is_file()


def test_shared_python_modules_are_links_to_lmcache_cuda() -> None:
    for name in ("gpu_probe.py", "gpu_kernels.py", "gpu_plugin.py", "gpu_testing.py"):
        mine = ROCM / "src" / "lmcache_rocm" / name
        assert mine.is_symlink(), f"{name} must be a symlink, not a copy"
        assert mine.resolve() == (CUDA / "src" / "lmcache_cuda" / name).resolve()
