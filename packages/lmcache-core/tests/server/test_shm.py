"""Shared-memory arena: aligned slots, reuse after free, clean-up of dead servers' segments."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys

import pytest

from lmcache_core.server.shm import ALIGN, PREFIX, ShmArena, remove_stale


@pytest.fixture
def shm_dir(dirs: tuple[str, str]) -> str:
    return dirs[1]


def test_slots_are_aligned_disjoint_and_reused(shm_dir: str) -> None:
    arena = ShmArena(shm_dir, segment_bytes=4096, limit_bytes=3 * 4096)
    a, b, c = arena.allocate(1000), arena.allocate(300), arena.allocate(2000)
    spans = sorted((arena.locate(t)[1], t.numel()) for t in (a, b, c))
    assert all(off % ALIGN == 0 for off, _ in spans)
    assert all(o1 + n1 <= o2 for (o1, n1), (o2, _) in itertools.pairwise(spans))
    for t, v in ((a, 1), (b, 2), (c, 3)):
        t.fill_(v)
    assert (int(a.sum()), int(b.sum()), int(c.sum())) == (1000, 600, 6000), "slots must not overlap"
    name, _ = arena.locate(b)
    arena.free(a)
    arena.free(b)  # merges with a's run
    d = arena.allocate(1024 + 256)
    assert arena.locate(d) == (name, 0)
    big = arena.allocate(5000)  # a segment of its own
    assert arena.locate(big)[0] != name and len(arena.names) == 2
    with pytest.raises(MemoryError, match="no room"):
        arena.allocate(8192)
    with pytest.raises(ValueError, match="live allocation"):
        arena.free(b)  # freed already (its bytes now lie inside d)
    assert sorted(os.listdir(shm_dir)) == sorted(arena.names)
    with open(os.path.join(shm_dir, name), "rb") as f:  # another mapping sees the bytes
        f.seek(arena.locate(c)[1])
        assert f.read(4) == b"\x03" * 4
    assert oct(os.stat(os.path.join(shm_dir, name)).st_mode & 0o777) == "0o600"
    arena.close()
    assert os.listdir(shm_dir) == []


def test_bad_arguments(shm_dir: str) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        ShmArena(shm_dir, 0, 10)
    with pytest.raises(ValueError, match="shm_dir"):
        ShmArena(shm_dir + "/missing", 4096, 4096)
    with pytest.raises(ValueError, match="nbytes"):
        ShmArena(shm_dir, 4096, 4096).allocate(0)


def test_remove_stale_removes_dead_servers_segments_only(shm_dir: str) -> None:
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    names = [f"{PREFIX}{dead_pid}.abcd.0", f"{PREFIX}{os.getpid()}.abcd.0", "unrelated", f"{PREFIX}x.y.z"]
    for n in names:
        open(os.path.join(shm_dir, n), "wb").close()
    assert remove_stale(shm_dir) == [names[0]]
    assert sorted(os.listdir(shm_dir)) == sorted(names[1:])
