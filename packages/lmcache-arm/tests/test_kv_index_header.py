"""lmcache-core's portable index header as this package builds it (needs a C++ compiler, g++).

The header must be found through ``lmcache_core.include_path.get_include()``, compile with no C++
standard library and no exceptions (what device compilers allow), and mark its functions
``__host__ __device__`` exactly when a CUDA or HIP compiler includes it.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lmcache_core.include_path import get_include

HEADER = Path(get_include()) / "lmcache_core" / "kv_index.h"
CXX = shutil.which("g++")
needs_cxx = pytest.mark.skipif(CXX is None, reason="g++ not found")


def test_get_include_finds_the_header() -> None:
    assert HEADER.is_file(), HEADER


def test_header_has_no_host_only_constructs() -> None:
    code = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.S)  # comments name what is excluded
    code = re.sub(r"//[^\n]*", "", code)
    for banned in (
        r"std::",
        r"\bthrow\b",
        r"\btry\b",
        r"#pragma\s+omp",
        r"\bnew\b",
        r"\bmalloc\b",
        r"\bprintf\b",
    ):
        assert not re.search(banned, code), banned
    assert re.findall(r"#include <([^>]+)>", code) == ["stdint.h"]


def _compile(tmp_path: Path, source: str, *flags: str) -> subprocess.CompletedProcess[str]:
    src = tmp_path / "probe.cpp"
    src.write_text(source)
    cmd = [str(CXX), "-std=c++11", "-fsyntax-only", "-Wall", "-Werror", "-I", get_include(), *flags, str(src)]
    return subprocess.run(cmd, capture_output=True, text=True)


@needs_cxx
def test_compiles_without_the_standard_library_or_exceptions(tmp_path: Path) -> None:
    source = (
        '#include "lmcache_core/kv_index.h"\n'
        "int64_t f() {\n"
        "  lmcache_core::KVGeometry g = {2, 1, 4, 16, {}};\n"
        "  g.kind[0] = {8, 128, 2, 16384, 128, lmcache_core::kv_axis(16, 1024), lmcache_core::kv_axis(128, 1)};\n"
        "  g.kind[1] = {8, 128, 2, 16384, 128, lmcache_core::kv_axis(16, 1), lmcache_core::kv_axis(128, 16)};\n"
        "  const int64_t flat[LMC_KV_KIND_FIELDS] = {1, 4, 2, 64, 0, 2, 2, 2, 1, 2, 16, 0, 1, 4, 1, 1, 4, 0, 0};\n"
        "  g.kind[1] = lmcache_core::kv_kind_unpack(flat);\n"
        "  return lmcache_core::kv_plane_row(g, 1, 37) + lmcache_core::kv_chunk_row_bytes(g, 1, 0, 5, 256) +\n"
        "         lmcache_core::kv_contiguous_run(g, 0) + lmcache_core::kv_plane_extent(g, 1) +\n"
        "         lmcache_core::kv_plane_element(g, 1, 3, 2, 0, 3);\n"
        "}\n"
    )
    result = _compile(tmp_path, source, "-nostdinc++", "-fno-exceptions", "-fno-rtti")
    assert result.returncode == 0, result.stderr


@needs_cxx
def test_host_device_macro_follows_the_compiler(tmp_path: Path) -> None:
    """On a host compiler LMC_HOST_DEVICE is empty; under __CUDACC__/__HIPCC__ it is __host__ __device__.

    The fake ``__host__`` below is a deprecation attribute: calling a function that carries it fails
    under -Werror, which shows the macro put it there.
    """
    source = (
        '#include "lmcache_core/kv_index.h"\n'
        "int64_t f() { lmcache_core::KVGeometry g = {2, 1, 4, 16, {}};\n"
        "  return lmcache_core::kv_kind_hidden(g, 0); }\n"
    )
    host = _compile(tmp_path, source)
    assert host.returncode == 0, host.stderr
    for marker in ("__CUDACC__", "__HIPCC__"):
        device = _compile(
            tmp_path, source, f"-D{marker}", "-D__host__=__attribute__((deprecated))", "-D__device__="
        )
        assert device.returncode != 0 and "deprecated" in device.stderr, (marker, device.stderr)


@needs_cxx
def test_checked_extent_helpers_refuse_what_would_wrap(tmp_path: Path) -> None:
    """kv_checked_*: the plane-fit arithmetic of every native backend, refusing int64 overflow.

    ``plane_offset + extent`` once wrapped to a negative end that "fit" (issue 9, item 1); each
    line below prints 1 when the helper accepts and the value it computed. Split axes (issue 12):
    a pair-packed channel axis adds each level's reach; a level stride that overflows, or level
    sizes that do not multiply to the width, are refused.
    """
    source = (
        '#include "lmcache_core/kv_index.h"\n'
        "#include <stdio.h>\n"
        "using namespace lmcache_core;\n"
        "int main() {\n"
        "  int64_t e = -1, b = -1;\n"
        "  KVGeometry g = {2, 2, 4, 4, {}};\n"
        "  g.kind[0] = KVKindGeometry{2, 8, 2, 64, 8, kv_axis(4, 16), kv_axis(8, 1)};\n"
        "  const int ok_e = kv_checked_plane_extent(g, 0, &e);\n"
        '  printf("%d %lld\\n", ok_e, (long long)e);\n'
        "  KVGeometry big = g; big.kind[0].block_stride = INT64_MAX / 2;\n"
        '  printf("%d\\n", kv_checked_plane_extent(big, 0, &b));\n'
        "  KVGeometry neg = g; neg.kind[0].head_stride = -1;\n"
        '  printf("%d\\n", kv_checked_plane_extent(neg, 0, &b));\n'
        "  KVGeometry pair = g; pair.kind[0].channel = KVSplitAxis{2, {2, 4, 1}, {1, 16, 0}};\n"
        "  int64_t pe = -1; const int ok_p = kv_checked_plane_extent(pair, 0, &pe);\n"
        '  printf("%d %lld\\n", ok_p, (long long)pe);\n'
        "  KVGeometry wide = g; wide.kind[0].channel = KVSplitAxis{2, {2, 4, 1}, {1, INT64_MAX / 2, 0}};\n"
        '  printf("%d\\n", kv_checked_plane_extent(wide, 0, &b));\n'
        "  KVGeometry prod = g; prod.kind[0].channel = KVSplitAxis{2, {2, 2, 1}, {1, 2, 0}};\n"
        '  printf("%d\\n", kv_checked_plane_extent(prod, 0, &b));\n'
        "  const int ok_b = kv_checked_plane_end_bytes(256, e, 2, &b);\n"
        '  printf("%d %lld\\n", ok_b, (long long)b);\n'
        '  printf("%d\\n", kv_checked_plane_end_bytes(INT64_MAX - e + 2, e, 1, &b));\n'
        '  printf("%d\\n", kv_checked_plane_end_bytes(INT64_MAX / 2 - 64, 256, 2, &b));\n'
        '  printf("%d\\n", kv_checked_plane_end_bytes(-1, e, 2, &b));\n'
        '  printf("%d\\n", kv_checked_mul_add(INT64_MAX, 2, 0, &b));\n'
        "  return 0;\n"
        "}\n"
    )
    src = tmp_path / "checked.cpp"
    src.write_text(source)
    exe = tmp_path / "checked"
    built = subprocess.run(
        [str(CXX), "-std=c++11", "-Wall", "-Werror", "-I", get_include(), str(src), "-o", str(exe)],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    ran = subprocess.run([str(exe)], capture_output=True, text=True, check=True)
    extent = 1 + 3 * 64 + 3 * 16 + 1 * 8 + 7 * 1
    assert ran.stdout.split("\n") == [
        f"1 {extent}",
        "0",
        "0",
        f"1 {1 + 3 * 64 + 3 * 16 + 1 * 8 + 1 * 1 + 3 * 16}",
        "0",
        "0",
        f"1 {(256 + extent) * 2}",
        "0",
        "0",
        "0",
        "0",
        "",
    ]
