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
  KVGeometry g = {};  // 2 kinds, 2 layers, 4 blocks of 4: NHD fp16, 16 slots, hidden 16, extent 256
  g.num_kinds = 2; g.num_layers = 2; g.num_blocks = 4; g.block_size = 4;
  for (int k = 0; k < 2; ++k) g.kind[k] = KVKindGeometry{2, 8, 2, 64, 8, kv_axis(4, 16), kv_axis(8, 1)};
  show("geometry ok", kv_check_geometry(g));
  KVGeometry es = g; es.kind[1].element_size = 3;
  show("element size", kv_check_geometry(es));
  KVGeometry neg = g; neg.kind[0].token.stride[0] = -1;
  show("negative stride", kv_check_geometry(neg));
  KVGeometry huge = g; huge.num_blocks = INT64_MAX / 2; huge.block_size = 4;
  show("slots overflow", kv_check_geometry(huge));
  KVGeometry kinds = g; kinds.num_kinds = 5;
  show("kinds", kv_check_geometry(kinds));
  KVGeometry levels = g; levels.kind[1].channel.levels = 0;
  show("levels", kv_check_geometry(levels));
  KVGeometry product = g; product.kind[0].token = KVSplitAxis{2, {2, 3, 1}, {1, 8, 0}};
  show("token product", kv_check_geometry(product));
  KVGeometry split = g;  // K pair-packed: channel (2:1)(4:2) and a transposed V: token (4:1) channel (8:4)
  split.kind[0].channel = KVSplitAxis{2, {2, 4, 1}, {1, 2, 0}};
  split.kind[1].token = kv_axis(4, 1); split.kind[1].channel = kv_axis(8, 4);
  show("split ok", kv_check_geometry(split));
  const uintptr_t address[2] = {4096, 8192};
  const int64_t nbytes[2] = {1024, 1024};
  const int64_t plane_tensor[4] = {0, 1, 0, 1};
  const int64_t plane_offset[4] = {0, 0, 256, 256};
  show("planes ok", kv_check_planes(g, address, nbytes, 2, plane_tensor, plane_offset, 4));
  const int64_t past_end[4] = {0, 0, 256, 257};
  show("plane past end", kv_check_planes(g, address, nbytes, 2, plane_tensor, past_end, 4));
  const int64_t wraps[4] = {0, 0, 256, INT64_MAX - 100};
  show("plane end wraps", kv_check_planes(g, address, nbytes, 2, plane_tensor, wraps, 4));
  const int64_t bad_tensor[4] = {0, 1, 0, 2};
  show("plane tensor", kv_check_planes(g, address, nbytes, 2, bad_tensor, plane_offset, 4));
  show("table length", kv_check_planes(g, address, nbytes, 2, plane_tensor, plane_offset, 3));
  KVGeometry far = g; far.kind[1].token.stride[0] = INT64_MAX / 2;
  show("split extent overflows", kv_check_planes(far, address, nbytes, 2, plane_tensor, plane_offset, 4));
  show("chunk ok", kv_check_chunk(g, 3, 1, 4096, 2 * 2 * 3 * 16 * 2));
  show("chunk size", kv_check_chunk(g, 3, 0, 4096, 100, "jobs[1]."));
  KVGeometry mla = g;  // nope 16 wide fp16, rope 4 wide fp32
  mla.kind[0] = KVKindGeometry{1, 16, 2, 64, 0, kv_axis(4, 16), kv_axis(16, 1)};
  mla.kind[1] = KVKindGeometry{1, 4, 4, 16, 0, kv_axis(4, 4), kv_axis(4, 1)};
  show("unequal chunk ok", kv_check_chunk(mla, 3, 0, 4096, 2 * 3 * 16 * 2 + 2 * 3 * 4 * 4));
  show("unequal chunk size", kv_check_chunk(mla, 3, 0, 4096, 1));
  show("skip prefix", kv_check_chunk(g, 3, 4, 4096, 384));
  const int64_t slots[4] = {99, 0, -1, 15};
  show("slots ok", kv_check_slots(g, slots, 4, 1, "slot_mapping"));
  const int64_t bad_slots[3] = {0, 16, 1};
  show("slot range", kv_check_slots(g, bad_slots, 3, 0, "jobs[2].slot_mapping"));
  return 0;
}
"""

EXPECTED = {
    "geometry ok": "",
    "element size": "kinds[1].element_size: expected 1, 2, 4 or 8 bytes, given 3",
    "negative stride": "kinds[0].token.stride[0]: expected >= 0 elements, given -1",
    "slots overflow": "geometry: num_blocks * block_size or num_kinds * num_layers overflows int64",
    "kinds": "num_kinds: expected 1 to 4 plane kinds, given 5",
    "levels": "kinds[1].channel: expected 1 to 3 levels, given 0",
    "token product": "kinds[0].token: expected sizes that multiply to block_size 4, given a product of 6",
    "split ok": "",
    "planes ok": "",
    "plane past end": "plane_offset[3]: plane spans elements [257, 257 + 256) of kv_caches[1], expected to "
    "fit in its 1024 bytes (2 per element)",
    "plane end wraps": "plane_offset[3]: plane spans elements [9223372036854775707, 9223372036854775707 + 256) "
    "of kv_caches[1], expected to fit in its 1024 bytes (2 per element)",
    "plane tensor": "plane_tensor[3]: expected a tensor index in [0, 2), given 2",
    "table length": "plane_tensor/plane_offset: expected 4 entries (num_kinds * num_layers), given 3",
    "split extent overflows": "geometry: plane extent of kinds[1], 1 + (num_blocks - 1) * block_stride + "
    "(heads - 1) * head_stride + sum of (size - 1) * stride over the token and channel levels, overflows int64",
    "chunk ok": "",
    "chunk size": "jobs[1].chunk: expected 384 bytes ([2, 3, 16] x 2 + [2, 3, 16] x 2 bytes: "
    "[num_layers, num_tokens, hidden] per plane kind), given 100",
    "unequal chunk ok": "",
    "unequal chunk size": "chunk: expected 288 bytes ([2, 3, 16] x 2 + [2, 3, 4] x 4 bytes: "
    "[num_layers, num_tokens, hidden] per plane kind), given 1",
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
