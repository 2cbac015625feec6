import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from lmcache_core.storage import open_adapter
from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
from lmcache_core.storage.fs_adapter import SUFFIX, object_name
from lmcache_core.storage.object_format import ObjectMeta

META = ObjectMeta("fmt", "uint8", (65536,), 16)
SIZE = 65536


def content(key: str, size: int = SIZE) -> np.ndarray:
    """Bytes that depend on the key only, so any process can check what it loaded."""
    seed = int.from_bytes(object_name(key)[:8].encode(), "little")
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def store(a, keys, size=SIZE):
    meta = ObjectMeta("fmt", "uint8", (size,), 16)
    return a.store([StoreItem(k, content(k, size), meta) for k in keys])


def load(a, keys, size=SIZE):
    bufs = {k: np.zeros(size, np.uint8) for k in keys}
    results = a.load([LoadRequest(k, (lambda b: lambda h: b)(bufs[k])) for k in keys])
    return results, bufs


def files(root: Path, pattern="*"):
    return sorted(p for p in root.glob(f"??/{pattern}"))


def test_round_trip_sharded_atomic_and_found_after_restart(tmp_path):
    keys = [f"model|fmt|tp1.0|-|{i:064x}" for i in range(20)]
    with open_adapter(f"fs://{tmp_path}") as a:
        assert [r.status for r in store(a, keys)] == [Status.OK] * 20
        assert [r.status for r in store(a, keys[:2])] == [Status.PRESENT] * 2
        snap = a.metrics.snapshot()
        assert snap["store_ok"] == 20 and snap["store_present"] == 2 and snap["store_bytes"] == 20 * SIZE
    published = files(tmp_path, "*" + SUFFIX)
    assert len(published) == 20 and not files(tmp_path, ".*")  # no temporary file left behind
    assert all(p.parent.name == p.name[:2] for p in published)
    with open_adapter(f"fs://{tmp_path}") as b:  # a new process would see the same
        assert b.lookup(keys + ["absent"]) == [True] * 20 + [False]
        results, bufs = load(b, keys + ["absent"])
        assert [r.status for r in results] == [Status.HIT] * 20 + [Status.MISS]
        assert all(np.array_equal(bufs[k], content(k)) for k in keys)
        assert b.delete(keys[:5]) == [True] * 5 and b.lookup(keys[:5]) == [False] * 5


@pytest.mark.parametrize(
    "damage",
    ["flip_payload", "flip_header", "truncate", "other_key"],
)
def test_damaged_files_are_misses_and_removed(tmp_path, damage):
    with open_adapter(f"fs://{tmp_path}?checksum=crc32") as a:
        store(a, ["k", "other"])
        path = Path(a.path_of("k"))
        raw = bytearray(path.read_bytes())
        if damage == "flip_payload":
            raw[-100] ^= 0x40
        elif damage == "flip_header":
            raw[33] ^= 1
        elif damage == "truncate":
            raw = raw[: len(raw) // 2]
        else:
            raw = bytearray(Path(a.path_of("other")).read_bytes())
        path.write_bytes(raw)
        results, _ = load(a, ["k"])
        assert results[0].status is Status.CORRUPT
        assert not path.exists()  # removed so no reader pays for it again
        snap = a.metrics.snapshot()
        assert snap["load_corrupt"] == 1 and snap["load_hits"] == 0
        assert sum(snap.failures_by_reason.values()) == 1


def test_lru_budget_keeps_recently_used(tmp_path):
    obj = SIZE + 128  # payload + header
    url = f"fs://{tmp_path}?budget={10 * obj}&low_water=0.8&touch_interval=0"
    with open_adapter(url) as a:
        old = [f"old{i}" for i in range(8)]
        store(a, old)
        past = time.time() - 100
        for i, k in enumerate(old):  # make the ages distinct and old: old0 is the oldest
            os.utime(a.path_of(k), (past + i, past + i))
        load(a, ["old0", "old1"])  # used again: now the most recent
        store(a, [f"new{i}" for i in range(4)])  # the 11th object > budget of 10 -> evict to 8
        present = {k for k in old if os.path.exists(a.path_of(k))}
        assert {"old0", "old1"} <= present
        assert "old2" not in present and "old3" not in present and "old4" not in present
        assert a.metrics.snapshot()["evictions"] == 3  # the budget is checked after every key
        total = sum(p.stat().st_size for p in files(tmp_path, "*" + SUFFIX))
        assert total <= 10 * obj


def test_janitor_removes_stale_temporaries_and_tombstones(tmp_path):
    with open_adapter(f"fs://{tmp_path}?budget=1G") as a:
        store(a, ["k"])
        shard = Path(a.path_of("k")).parent
        stale_tmp, fresh_tmp, dead = shard / ".x.1.1.tmp", shard / ".y.1.2.tmp", shard / ".z.1.3.dead"
        for p in (stale_tmp, fresh_tmp, dead):
            p.write_bytes(b"x")
        os.utime(stale_tmp, (time.time() - 7200,) * 2)
        os.utime(dead, (time.time() - 120,) * 2)
        total, found = a.scan()
        assert len(found) == 1 and total == Path(a.path_of("k")).stat().st_size + 1  # the fresh tmp counts
        assert fresh_tmp.exists() and not stale_tmp.exists() and not dead.exists()


@pytest.mark.parametrize("where", ["disk", "tmpfs"])
def test_o_direct_round_trip_or_fallback(tmp_path, where):
    root = tmp_path if where == "disk" else Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        with open_adapter(f"fs://{root}?o_direct=1") as a:
            keys = [f"d{i}" for i in range(3)]
            assert {r.status for r in store(a, keys, 12345)} == {Status.OK}
            results, bufs = load(a, keys, 12345)
            assert [r.status for r in results] == [Status.HIT] * 3
            assert all(np.array_equal(bufs[k], content(k, 12345)) for k in keys)
            assert Path(a.path_of("d0")).stat().st_size == (4096 if a.o_direct else 64) + 12345
    finally:
        if where == "tmpfs":
            shutil.rmtree(root)


WORKER = textwrap.dedent(
    """
    import hashlib, json, random, sys
    from collections import Counter
    import numpy as np
    from lmcache_core.storage import open_adapter
    from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
    from lmcache_core.storage.fs_adapter import object_name
    from lmcache_core.storage.object_format import ObjectMeta

    url, seed, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    SIZE = 65536
    META = ObjectMeta("fmt", "uint8", (SIZE,), 16)

    def content(key):
        s = int.from_bytes(object_name(key)[:8].encode(), "little")
        return np.random.default_rng(s).integers(0, 256, SIZE, dtype=np.uint8)

    a = open_adapter(url)
    rng = random.Random(seed)
    keys = [f"shared-{i}" for i in range(40)]
    seen = Counter()
    for _ in range(ops):
        k = rng.choice(keys)
        if rng.random() < 0.5:
            a.store([StoreItem(k, content(k), META)])
        else:
            buf = np.zeros(SIZE, np.uint8)
            r = a.load([LoadRequest(k, lambda h: buf)])[0]
            seen[r.status.value] += 1
            if r.status is Status.HIT and not np.array_equal(buf, content(k)):
                seen["wrong_bytes"] += 1
        if rng.random() < 0.05:
            a.delete([rng.choice(keys)])
    a.close()
    print(json.dumps({"seen": seen, "counts": a.metrics.snapshot().counts}))
    """
)


def test_several_processes_share_one_directory_with_eviction(tmp_path):
    """Three processes store, load, delete and evict one small directory at once: no load ever
    returns wrong bytes, and no object is ever torn (no checksum failure)."""
    budget = 16 * (SIZE + 128)  # 40 keys x 64 KiB do not fit: constant eviction
    url = f"fs://{tmp_path / 'shared'}?budget={budget}&rescan_interval=0.05&touch_interval=0"
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), url, str(seed), "1000"], stdout=subprocess.PIPE, text=True
        )
        for seed in range(3)
    ]
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        outs.append(json.loads(out))
    seen = {k: sum(o["seen"].get(k, 0) for o in outs) for k in ("hit", "miss", "corrupt", "wrong_bytes")}
    counts = {k: sum(o["counts"].get(k, 0) for o in outs) for k in ("evictions", "store_ok", "load_corrupt")}
    assert seen["hit"] > 50 and seen["miss"] > 0
    assert seen["wrong_bytes"] == 0 and seen["corrupt"] == 0 and counts["load_corrupt"] == 0
    assert counts["evictions"] > 0 and counts["store_ok"] > 40
    with open_adapter(url) as a:  # a newcomer's scan brings the directory under budget
        a.enforce_budget()
        total, found = a.scan()
        assert total <= budget and len(found) <= 16
        assert not files(tmp_path / "shared", ".*.tmp")


def test_disk_full_fails_those_stores_only(tiny_tmpfs, caplog):
    with open_adapter(f"fs://{tiny_tmpfs}?log_interval=60") as a:
        keys = [f"big{i}" for i in range(8)]
        results = store(a, keys, 256 * 1024)  # 8 x 256 KiB do not fit in 1 MiB
        ok = [k for k, r in zip(keys, results, strict=True) if r.status is Status.OK]
        failed = [r for r in results if r.status is Status.FAILED]
        assert 1 <= len(ok) < 8 and failed and {r.reason for r in failed} == {"ENOSPC"}
        snap = a.metrics.snapshot()
        assert snap["store_failed"] == len(failed) and snap.failures_by_reason == {
            "store:ENOSPC": len(failed)
        }
        assert a.available  # a full disk is not a dead tier
        loaded, bufs = load(a, ok, 256 * 1024)  # what was stored is intact and readable
        assert all(r.status is Status.HIT for r in loaded)
        assert all(np.array_equal(bufs[k], content(k, 256 * 1024)) for k in ok)
        assert not files(tiny_tmpfs, ".*")  # failed writes left no temporary files
    lines = [r for r in caplog.records if "ENOSPC" in r.getMessage()]
    assert len(lines) == 1 and not lines[0].exc_info  # one line, no traceback


PERMISSION_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from lmcache_core.storage import open_adapter
    from lmcache_core.storage.adapter import LoadRequest, StoreItem
    from lmcache_core.storage.object_format import ObjectMeta
    a = open_adapter(sys.argv[1])
    meta = ObjectMeta("fmt", "uint8", (1024,), 16)
    stored = a.store([StoreItem("new", np.ones(1024, np.uint8), meta)])[0]
    buf = np.zeros(1024, np.uint8)
    loaded = a.load([LoadRequest("existing", lambda h: buf)])[0]
    snap = a.metrics.snapshot()
    print(json.dumps({"store": [stored.status.value, stored.reason], "load": loaded.status.value,
                      "sum": int(buf.sum()), "failures": snap.failures_by_reason,
                      "read_only": snap.gauges["read_only"]}))
    """
)


def _drop_dac_override():
    """In the child, before exec: root without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH obeys file
    modes like any user (prctl PR_CAPBSET_DROP; a no-op for a non-root user, who obeys them anyway)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_permission_denied_fails_stores_and_keeps_loads(tmp_path):
    root = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        root.chmod(0o755)
        with open_adapter(f"fs://{root}") as a:
            a.store(
                [StoreItem("existing", np.full(1024, 2, np.uint8), ObjectMeta("fmt", "uint8", (1024,), 16))]
            )
        for d in [root, *root.iterdir()]:
            d.chmod(0o555)  # nobody may create files any more
        script = tmp_path / "child.py"
        script.write_text(PERMISSION_CHILD)
        # a byte budget on a directory it cannot write: it must still open (no eviction lock)
        out = subprocess.run([sys.executable, str(script), f"fs://{root}?budget=1K"], capture_output=True, text=True,
                             timeout=60, check=True, preexec_fn=_drop_dac_override)  # fmt: skip
        got = json.loads(out.stdout)
        # detected read-only at open: stores fail without trying, loads work
        assert got["store"] == ["failed", "read_only"] and got["failures"] == {"store:read_only": 1}
        assert got["load"] == "hit" and got["sum"] == 2 * 1024 and got["read_only"] == 1.0
    finally:
        for d in [root, *root.iterdir()]:
            d.chmod(0o755)
        shutil.rmtree(root)


@pytest.mark.parametrize("setting", ["auto", "on", "off", "ON", "0", "yes"])
def test_inline_lookup_setting_decides_the_thread_and_never_the_answer(tmp_path, setting):
    keys = [f"k{i}" for i in range(3)]
    with open_adapter(f"fs://{tmp_path}?inline_lookup={setting}") as a:
        assert store(a, keys)[0].status is Status.OK
        names: list[str] = []
        inner = a._lookup
        a._lookup = lambda ks: names.append(threading.current_thread().name) or inner(ks)
        assert a.lookup(keys + ["absent"]) == [True, True, True, False]
        assert a.submit_lookup(keys[:1]).result(5) == [True]
        if setting == "auto":
            assert a.fs_kind is not None and a.inline_lookup == a.fs_kind.local
        else:
            assert a.fs_kind is None and a.inline_lookup == (setting.lower() in ("on", "yes"))
        if a.inline_lookup:  # the caller's thread: this one, then the submit worker
            assert names[0] == threading.current_thread().name and names[-1].startswith("l2-fs-")
        else:
            assert all(n.startswith("l2-io-fs-") for n in names) and len(names) == 5
        assert a.metrics.snapshot().gauges["inline_lookups"] == float(a.inline_lookup)


def test_inline_lookup_must_be_auto_on_or_off(tmp_path):
    with pytest.raises(
        ValueError, match=r"parameter inline_lookup: expected auto, on or off, given 'sometimes'"
    ):
        open_adapter(f"fs://{tmp_path}?inline_lookup=sometimes")
