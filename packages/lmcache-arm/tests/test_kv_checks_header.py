"""lmcache-core's shared native transfer checks (``lmcache_core/kv_checks.h``) as this package
builds them (needs g++): each check returns an empty string when the arguments are fine and the
message of a ValueError otherwise; lmcache-arm's launcher wraps those messages (issue 11.4)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lmcache_core.include_path import get_include

HEADER = Path(get_include()) / "lmcache_core" / "kv_checks.h"
CXX = shutil.which("g++")

_PROGRAM = r"""
#include "lmcache_core/kv_checks.h"
#include <stdio.h>
using namespace lmcache_core;
static void show(const char* what, const std::string& m) { printf("%s|%s\n", what, m.c_str()); }
int main() {
  const KVGeometry g = {2, 2, 4, 4, 2, 8, 64, 16, 8, 1};  // 16 slots, hidden 16, extent 256
  show("geometry ok", kv_check_geometry(g, 2));
  show("element size", kv_check_geometry(g, 3));
  KVGeometry neg = g; neg.token_stride = -1;
  show("negative stride", kv_check_geometry(neg, 2));
  KVGeometry huge = g; huge.num_blocks = INT64_MAX / 2; huge.block_size = 4;
  show("slots overflow", kv_check_geometry(huge, 2));
  const uintptr_t address[2] = {4096, 8192};
  const int64_t nbytes[2] = {1024, 1024};
  const int64_t plane_tensor[4] = {0, 1, 0, 1};
  const int64_t plane_offset[4] = {0, 0, 256, 256};
  show("planes ok", kv_check_planes(g, 2, address, nbytes, 2, plane_tensor, plane_offset, 4));
  const int64_t past_end[4] = {0, 0, 256, 257};
  show("plane past end", kv_check_planes(g, 2, address, nbytes, 2, plane_tensor, past_end, 4));
  const int64_t wraps[4] = {0, 0, 256, INT64_MAX - 100};
  show("plane end wraps", kv_check_planes(g, 2, address, nbytes, 2, plane_tensor, wraps, 4));
  const int64_t bad_tensor[4] = {0, 1, 0, 2};
  show("plane tensor", kv_check_planes(g, 2, address, nbytes, 2, bad_tensor, plane_offset, 4));
  show("table length", kv_check_planes(g, 2, address, nbytes, 2, plane_tensor, plane_offset, 3));
  show("chunk ok", kv_check_chunk(g, 2, 3, 1, 4096, 2 * 2 * 3 * 16 * 2));
  show("chunk size", kv_check_chunk(g, 2, 3, 0, 4096, 100, "jobs[1]."));
  show("skip prefix", kv_check_chunk(g, 2, 3, 4, 4096, 384));
  const int64_t slots[4] = {99, 0, -1, 15};
  show("slots ok", kv_check_slots(g, slots, 4, 1, "slot_mapping"));
  const int64_t bad_slots[3] = {0, 16, 1};
  show("slot range", kv_check_slots(g, bad_slots, 3, 0, "jobs[2].slot_mapping"));
  return 0;
}
"""

EXPECTED = {
    "geometry ok": "",
    "element size": "element_size: expected 1, 2, 4 or 8 bytes, given 3",
    "negative stride": "token_stride: expected >= 0 elements, given -1",
    "slots overflow": "geometry: num_blocks * block_size, num_kv_heads * head_size * element_size or "
    "num_kv * num_layers overflows int64",
    "planes ok": "",
    "plane past end": "plane_offset[3]: plane spans elements [257, 257 + 256) of kv_caches[1], expected to "
    "fit in its 1024 bytes (2 per element)",
    "plane end wraps": "plane_offset[3]: plane spans elements [9223372036854775707, 9223372036854775707 + 256) "
    "of kv_caches[1], expected to fit in its 1024 bytes (2 per element)",
    "plane tensor": "plane_tensor[3]: expected a tensor index in [0, 2), given 2",
    "table length": "plane_tensor/plane_offset: expected 4 entries (num_kv * num_layers), given 3",
    "chunk ok": "",
    "chunk size": "jobs[1].chunk: expected 384 bytes ([num_kv 2, num_layers 2, num_tokens 3, hidden 16] x 2 "
    "bytes), given 100",
    "skip prefix": "skip_prefix: expected 0 <= skip_prefix <= 3, given 4",
    "slots ok": "",
    "slot range": "jobs[2].slot_mapping[1]: expected -1 <= slot < 16 (num_blocks 4 * block_size 4), given 16",
}


def test_header_ships_with_the_core() -> None:
    assert HEADER.is_file(), HEADER


@pytest.mark.skipif(CXX is None, reason="g++ not found")
def test_each_check_returns_empty_or_the_message(tmp_path: Path) -> None:
    src, exe = tmp_path / "checks.cpp", tmp_path / "checks"
    src.write_text(_PROGRAM)
    built = subprocess.run(
        [
            str(CXX),
            "-std=c++17",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            get_include(),
            str(src),
            "-o",
            str(exe),
        ],
        capture_output=True,
        text=True,
    )
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    got = dict(line.split("|", 1) for line in out.splitlines())
    assert got == EXPECTED
