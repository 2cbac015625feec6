"""The fs tier in a hostile environment: readers that cannot judge an object, read-only and full
mounts, symbolic links out of the root, damage that cannot be removed, killed writers, and
concurrent writers against one byte budget. Real files, mounts and processes only."""

import hashlib
import json
import logging
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from lmcache_core.storage import open_adapter
from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
from lmcache_core.storage.fs_adapter import SUFFIX, TMP_GRACE, object_name
from lmcache_core.storage.object_format import FIXED_SIZE, ObjectMeta

SIZE = 4096
META = ObjectMeta("fmt", "uint8", (SIZE,), 16)


def content(key: str, size: int = SIZE) -> np.ndarray:
    seed = int.from_bytes(object_name(key)[:8].encode(), "little")
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def store(a, keys, size=SIZE):
    meta = ObjectMeta("fmt", "uint8", (size,), 16)
    return a.store([StoreItem(k, content(k, size), meta) for k in keys])


def load(a, keys, size=SIZE):
    bufs = {k: np.zeros(size, np.uint8) for k in keys}
    results = a.load([LoadRequest(k, (lambda b: lambda h: b)(bufs[k])) for k in keys])
    return results, bufs


def tree(root: Path) -> dict[str, str]:
    """Every file under ``root`` (links not followed) -> digest of its bytes (or its link target);
    the eviction lock file, which holds no data, aside."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.name == ".evict.lock":
            continue
        if p.is_symlink():
            out[str(p.relative_to(root))] = "link:" + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def reheader(path: Path, offset: int, fmt: str, value: int) -> None:
    """Change one header field of the object at ``path`` and fix the header's own crc32, as a
    writer of that other value would have written it."""
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    ndim, klen, flen, dlen = raw[25], *struct.unpack_from("<HH", raw, 26), raw[30]
    used = FIXED_SIZE + 8 * ndim + klen + flen + dlen
    struct.pack_into("<I", raw, 36, 0)
    struct.pack_into("<I", raw, 36, zlib.crc32(bytes(raw[:used])))
    path.write_bytes(raw)


# ---- item 5: a reader that cannot verify leaves the object alone ------------------------------

NO_XXHASH_READER = textwrap.dedent(
    """
    import json, sys
    sys.modules["xxhash"] = None  # this host has no xxhash: import xxhash raises ImportError
    import numpy as np
    from lmcache_core.storage import open_adapter
    from lmcache_core.storage.adapter import LoadRequest
    from lmcache_core.storage.object_format import has_xxhash
    url, keys = sys.argv[1], sys.argv[2].split(",")
    a = open_adapter(url)
    statuses = [a.load([LoadRequest(k, lambda h: np.zeros(h.payload_len, np.uint8))])[0] for k in keys]
    again = a.lookup(keys)
    a.enforce_budget()
    a.close()
    print(json.dumps({"xxhash": has_xxhash(), "status": [[r.status.value, r.reason] for r in statuses],
                      "lookup_again": again, "counts": a.metrics.snapshot().counts}))
    """
)


def test_a_host_without_xxhash_deletes_nothing_of_a_shared_cache(tmp_path):
    root = tmp_path / "shared"
    xx = [f"xx{i}" for i in range(12)]
    crc = [f"crc{i}" for i in range(3)]
    with open_adapter(f"fs://{root}") as a:  # xxh3: the default, xxhash being a core dependency
        assert {r.status for r in store(a, xx)} == {Status.OK}
    with open_adapter(f"fs://{root}?checksum=crc32") as a:
        assert {r.status for r in store(a, crc)} == {Status.OK}
    before = tree(root)
    script = tmp_path / "reader.py"
    script.write_text(NO_XXHASH_READER)
    url = f"fs://{root}?budget=1G&rescan_interval=0"
    out = subprocess.run([sys.executable, str(script), url, ",".join(xx + crc)], capture_output=True,
                         text=True, timeout=120, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["xxhash"] is False
    assert got["status"] == [["unverifiable", "unverifiable"]] * 12 + [["hit", ""]] * 3
    assert got["lookup_again"] == [False] * 12 + [True] * 3  # remembered: no longer hits
    assert got["counts"]["load_unverifiable"] == 12 and got["counts"].get("load_corrupt", 0) == 0
    assert tree(root) == before  # zero deletions, zero changes


def test_a_newer_or_foreign_object_is_a_miss_and_untouched(tmp_path):
    with open_adapter(f"fs://{tmp_path}") as a:
        store(a, ["newer", "foreign", "ok"])
        reheader(Path(a.path_of("newer")), 4, "<H", 3)  # version 3, valid for its writer
        Path(a.path_of("foreign")).write_bytes(b"PARQUET-or-anything" * 100)
        before = tree(tmp_path)
        results, bufs = load(a, ["newer", "foreign", "ok"])
        assert [(r.status, r.reason) for r in results] == [
            (Status.UNVERIFIABLE, "newer_version"),
            (Status.UNVERIFIABLE, "foreign_format"),
            (Status.HIT, ""),
        ]
        assert not bufs["newer"].any() and np.array_equal(bufs["ok"], content("ok"))
        assert a.lookup(["newer", "foreign", "ok"]) == [False, False, True]
        a.enforce_budget()
        assert tree(tmp_path) == before
        snap = a.metrics.snapshot()
        assert snap["load_unverifiable"] == 2 and snap["load_corrupt"] == 0 and snap["bad_key_skips"] == 2
        assert snap.gauges["bad_keys"] == 2


# ---- item 7: set-up failures degrade ----------------------------------------------------------


def test_read_only_mount_is_detected_and_serves_loads(tmp_path, mounts, caplog):
    caplog.set_level(logging.WARNING)
    src = tmp_path / "src"
    with open_adapter(f"fs://{src}") as a:
        store(a, ["a", "b"])
    ro = mounts.read_only(src, tmp_path / "ro")
    before = tree(ro)
    with open_adapter(f"fs://{ro}?budget=4K&touch_interval=0") as a:  # over budget, and read-only
        snap = a.metrics.snapshot()
        assert a.read_only and snap.gauges["read_only"] == 1.0 and snap["read_only_events"] == 1
        assert a.available and a.lookup(["a", "b", "c"]) == [True, True, False]
        results, bufs = load(a, ["a", "b"])
        assert [r.status for r in results] == [Status.HIT] * 2 and np.array_equal(bufs["a"], content("a"))
        assert [(r.status, r.reason) for r in store(a, ["c"])] == [(Status.FAILED, "read_only")]
        assert a.enforce_budget() == 0 and a.delete(["a"]) == [False]
    assert tree(ro) == before
    lines = [r.getMessage() for r in caplog.records if "read-only" in r.getMessage()]
    assert len(lines) == 1 and "EROFS" in lines[0]


def test_mode_ro_writes_nothing(tmp_path):
    with open_adapter(f"fs://{tmp_path}") as a:
        store(a, ["a"])
        raw = bytearray(Path(a.path_of("a")).read_bytes())
        raw[-1] ^= 1  # damaged under our format
        Path(a.path_of("a")).write_bytes(raw)
    before = tree(tmp_path)
    with open_adapter(f"fs://{tmp_path}?mode=ro&budget=1K") as a:
        assert store(a, ["b"])[0].reason == "read_only"
        results, _ = load(a, ["a"])
        assert results[0].status is Status.CORRUPT
        assert a.lookup(["a"]) == [False]  # damage it may not remove stops counting as a hit
        assert a.metrics.snapshot()["bad_keys_added"] == 1
    assert tree(tmp_path) == before


def test_unreachable_root_starts_unavailable_and_recovers(tmp_path, mounts, caplog):
    caplog.set_level(logging.WARNING)
    parent = mounts.read_only(tmp_path / "src", tmp_path / "mnt")
    url = f"fs://{parent}/cache?retry_min=0.1&retry_max=0.2"
    with open_adapter(url) as a:  # the root cannot be made: EROFS
        snap = a.metrics.snapshot()
        assert not a.available and snap["unavailable_events"] == 1 and snap.gauges["available"] == 0.0
        assert store(a, ["k"])[0].status is Status.UNAVAILABLE and a.lookup(["k"]) == [False]
        mounts.writable(parent)
        deadline = time.monotonic() + 5
        while not a.available and time.monotonic() < deadline:
            a.lookup(["k"])
            time.sleep(0.05)
        assert a.available and a.metrics.snapshot()["reconnects"] == 1
        assert store(a, ["k"])[0].status is Status.OK and load(a, ["k"])[0][0].status is Status.HIT
    text = [r.getMessage() for r in caplog.records]
    assert sum("unavailable (" in t for t in text) == 1 and sum("available again" in t for t in text) == 1


def test_inodes_exhausted_starts_read_only_and_becomes_writable(tmp_path, mounts, caplog):
    caplog.set_level(logging.WARNING)
    fs = mounts.tmpfs(tmp_path / "small", nr_inodes=400)
    filler = fs / "filler"
    filler.mkdir()
    n = 0
    while True:  # use up every inode
        try:
            (filler / str(n)).touch()
        except OSError:
            break
        n += 1
    with open_adapter(f"fs://{fs}?retry_min=0.1&retry_max=0.2&budget=1M") as a:
        assert a.read_only and a.available and a.metrics.snapshot()["read_only_events"] == 1
        assert store(a, ["k"])[0].reason == "read_only"
        for p in filler.iterdir():  # space comes back
            p.unlink()
        time.sleep(0.25)
        assert store(a, ["k"])[0].status is Status.OK and not a.read_only
        assert load(a, ["k"])[0][0].status is Status.HIT
    assert sum("read-only" in r.getMessage() and "ENOSPC" in r.getMessage() for r in caplog.records) == 1
    assert sum("writable again" in r.getMessage() for r in caplog.records) == 1


# ---- item 8: stay inside the root -------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/tmp/..", "//", "/./"])
def test_the_file_system_root_is_refused(path):
    with pytest.raises(ValueError, match="other than /"):
        open_adapter(f"fs://{path}")


def test_a_link_resolving_to_the_root_is_refused(tmp_path):
    (tmp_path / "link").symlink_to("/")
    with pytest.raises(ValueError, match="other than /"):
        open_adapter(f"fs://{tmp_path}/link")


def test_a_symlinked_shard_is_never_followed(tmp_path):
    root, outside = tmp_path / "tier", tmp_path / "outside"
    outside.mkdir()
    victim_key = next(f"v{i}" for i in range(1000) if object_name(f"v{i}")[:2] == "00")
    with open_adapter(f"fs://{root}") as a:
        store(a, [victim_key])  # a real object, then moved outside behind a link
    shard = root / "00"
    (shard / (object_name(victim_key) + SUFFIX)).rename(outside / (object_name(victim_key) + SUFFIX))
    (outside / "precious.kv").write_bytes(b"x" * 100_000)
    shard.rmdir()
    shard.symlink_to(outside, target_is_directory=True)
    before_outside = tree(outside)
    with open_adapter(f"fs://{root}?budget=1&rescan_interval=0") as a:  # evict everything it sees
        assert a.lookup([victim_key]) == [False]
        assert load(a, [victim_key])[0][0].status is Status.MISS
        total, files = a.scan()
        assert total == 0 and files == []  # the linked shard's contents are not the tier's
        assert a.delete([victim_key]) == [False]
        assert tree(outside) == before_outside  # not a byte outside the root was touched
        other = next(f"w{i}" for i in range(1000) if object_name(f"w{i}")[:2] == "00")
        assert store(a, [other])[0].status is Status.OK  # the link is replaced by a real directory
    assert not shard.is_symlink() and shard.is_dir()
    assert tree(outside) == before_outside


def test_a_symlink_at_an_object_path_is_removed_never_its_target(tmp_path):
    root, outside = tmp_path / "tier", tmp_path / "outside"
    outside.mkdir()
    with open_adapter(f"fs://{root}") as a:
        store(a, ["k"])
        obj = Path(a.path_of("k"))
        target = outside / "target.kv"
        obj.rename(target)  # a valid object, reachable only through the link
        obj.symlink_to(target)
        results, bufs = load(a, ["k"])
        assert (results[0].status, results[0].reason) == (Status.CORRUPT, "symlink") and not bufs["k"].any()
        assert not obj.is_symlink() and not obj.exists() and target.exists()
        obj.symlink_to(target)
        assert a.lookup(["k"]) == [False] and not obj.is_symlink()  # lookups remove it too
        obj.symlink_to(target)
        a.scan()
        assert not obj.is_symlink() and target.exists()


# ---- item 9: damage that cannot be removed stops counting as a hit ----------------------------


def test_a_directory_at_an_object_path_is_remembered(tmp_path):
    with open_adapter(f"fs://{tmp_path}?budget=1M") as a:
        path = Path(a.path_of("k"))
        path.mkdir()
        (path / "inside").write_bytes(b"y")
        assert a.lookup(["k"]) == [False] and a.lookup(["k"]) == [False]
        assert load(a, ["k"])[0][0].status is Status.MISS
        snap = a.metrics.snapshot()
        assert snap["bad_keys_added"] == 1 and snap["bad_key_skips"] == 2 and snap["load_failed"] == 0
        assert a.delete(["k"]) == [False]
        a.enforce_budget()
        assert (path / "inside").read_bytes() == b"y"


def test_corrupt_object_on_a_read_only_mount_is_remembered(tmp_path, mounts):
    src = tmp_path / "src"
    with open_adapter(f"fs://{src}?checksum=crc32") as a:
        store(a, ["k", "ok"])
        raw = bytearray(Path(a.path_of("k")).read_bytes())
        raw[-1] ^= 1
        Path(a.path_of("k")).write_bytes(raw)
    ro = mounts.read_only(src, tmp_path / "ro")
    before = tree(ro)
    with open_adapter(f"fs://{ro}") as a:
        assert a.lookup(["k", "ok"]) == [True, True]  # existence only, until it is read
        assert load(a, ["k"])[0][0].reason == "bad_checksum"
        assert a.lookup(["k", "ok"]) == [False, True]
        assert load(a, ["k"])[0][0].status is Status.MISS  # no second failed load
        assert a.metrics.snapshot()["load_corrupt"] == 1
    assert tree(ro) == before


# ---- item 11: crashed writers' temporary files; overshoot under concurrent writers -----------

WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from lmcache_core.storage import open_adapter
    from lmcache_core.storage.adapter import StoreItem
    from lmcache_core.storage.object_format import ObjectMeta
    url, tag, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    meta = ObjectMeta("fmt", "uint8", (size,), 16)
    payload = np.full(size, 7, np.uint8)
    a = open_adapter(url)
    for i in range(count):
        r = a.store([StoreItem(f"{tag}-{i}", payload, meta)])[0]
        assert r.status.value in ("ok", "present"), r
    a.close()
    """
)


def tmp_files(root: Path, pid: int | None = None) -> list[Path]:
    return [p for p in root.glob("??/.*.tmp") if pid is None or p.name.split(".")[2] == str(pid)]


def killed_mid_write(script: Path, url: str, root: Path, tag: str) -> int:
    """Start a writer and SIGKILL it while it has a temporary file; returns that file's size."""
    for _ in range(50):
        p = subprocess.Popen([sys.executable, str(script), url, tag, "100000", str(8 << 20)])
        try:
            deadline = time.monotonic() + 60
            while not tmp_files(root, p.pid) and time.monotonic() < deadline:
                time.sleep(0.001)
            os.kill(p.pid, signal.SIGKILL)
        finally:
            p.wait()
        left = tmp_files(root, p.pid)
        if left:
            return sum(f.stat().st_size for f in left)
    pytest.fail("no writer was caught mid-write in 50 tries")


def test_killed_writers_temporaries_count_and_are_removed(tmp_path):
    root = tmp_path / "tier"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    url = f"fs://{root}?fsync=1"
    left = [killed_mid_write(script, url, root, f"w{i}") for i in range(4)]
    live = subprocess.Popen([sys.executable, str(script), url, "live", "100000", str(8 << 20)])
    try:
        while not tmp_files(root, live.pid):
            time.sleep(0.001)
        os.kill(live.pid, signal.SIGSTOP)  # alive, holding its temporary file's flock
        live_tmp = tmp_files(root, live.pid)
        assert len(tmp_files(root)) >= 5 and sum(left) > 0
        time.sleep(TMP_GRACE + 0.1)  # every temporary file is old enough to be judged
        with open_adapter(f"fs://{root}?budget=1T") as a:  # the next scan
            published = sum(p.stat().st_size for p in root.glob("??/*" + SUFFIX))
            total, _ = a.scan()
            assert tmp_files(root) == live_tmp  # the killed writers' files went, the live one stayed
            assert total == published + sum(p.stat().st_size for p in live_tmp)  # and counts
            assert a.metrics.snapshot()["stale_removed"] == len(left)
    finally:
        os.kill(live.pid, signal.SIGKILL)
        live.wait()


OVERSHOOT_MONITOR_OBJECTS = 60


def test_overshoot_of_four_concurrent_writers_stays_within_the_documented_bound(tmp_path):
    """Four writer processes share one budget; the directory (objects, temporaries, tombstones)
    is sampled every millisecond. Bound (docs/storage.md): budget x (2 - low_water) + P x W x S
    (W = 1 write in flight per process, S = one object)."""
    root = tmp_path / "tier"
    size, procs, low = 256 << 10, 4, 0.9
    obj = size + 64
    budget = 32 * obj
    url = f"fs://{root}?budget={budget}&low_water={low}&rescan_interval=0.05"
    open_adapter(url).close()
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    writers = [subprocess.Popen([sys.executable, str(script), url, f"p{i}", str(OVERSHOOT_MONITOR_OBJECTS),
                                 str(size)]) for i in range(procs)]  # fmt: skip
    peak = 0
    while any(w.poll() is None for w in writers):
        used = 0
        for shard in root.iterdir():
            if shard.is_dir():
                for f in os.scandir(shard):
                    try:
                        used += f.stat(follow_symlinks=False).st_size
                    except FileNotFoundError:
                        pass
        peak = max(peak, used)
        time.sleep(0.001)
    assert all(w.returncode == 0 for w in writers)
    bound = budget * (2 - low) + procs * 1 * obj
    print(f"overshoot: peak {peak / budget:.3f} x budget, bound {bound / budget:.3f} x")
    assert peak > budget * low  # the test did fill the budget
    assert peak <= bound
