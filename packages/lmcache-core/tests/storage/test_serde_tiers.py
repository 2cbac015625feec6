"""A tier's codec chain through real adapters: headers, misses with reasons, new processes."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcache_core.storage import object_format as of
from lmcache_core.storage import open_adapter
from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
from lmcache_core.storage.object_format import ObjectMeta

SHAPE = (2, 3, 16, 64)
KEY = "tiny|kv2.L3.h64.{dtype}|tp1.0|{salt}|{n:04x}"


def chunk(dtype="bfloat16", seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(SHAPE, generator=g) * 4).to(getattr(torch, dtype)).contiguous()
    return x.view(torch.uint8).numpy().reshape(-1), ObjectMeta(f"kv2.L3.h64.{dtype}", dtype, SHAPE, 16)


def key(n, dtype="bfloat16", salt="-"):
    return KEY.format(dtype=dtype, salt=salt, n=n)


def load(a, k, nbytes):
    buf = np.zeros(nbytes, np.uint8)
    seen = []

    def alloc(h):
        seen.append(h)
        return buf

    return a.load([LoadRequest(k, alloc)])[0], buf, seen


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "keys" / "master.key"
    path.parent.mkdir()
    path.write_bytes(os.urandom(32))
    path.chmod(0o600)
    return path


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("chain", ["zstd", "lz4,aesgcm", "fp8,zstd,aesgcm", "int8:group=32"])
def test_fs_tier_stores_encoded_and_loads_plain(tmp_path, key_file, chain, dtype):
    raw, meta = chunk(dtype)
    chain = chain.replace("aesgcm", f"aesgcm:key_file={key_file}")
    with open_adapter(f"fs://{tmp_path / 'kv'}?serde={chain}") as a:
        assert a.store([StoreItem(key(1, dtype), raw, meta)])[0].status is Status.OK
        stored = Path(a.path_of(key(1, dtype))).read_bytes()
        header = of.decode_header(stored)
        assert struct_version(stored) == 2 and header.meta.serde is not None
        assert header.meta.serde.names == tuple(c.split(":")[0] for c in chain.split(","))
        r, buf, seen = load(a, key(1, dtype), raw.nbytes)
        assert r.status is Status.HIT and r.header.meta == meta and r.header.payload_len == raw.nbytes
        assert seen[0].meta == meta and seen[0].payload_len == raw.nbytes  # callers see plain headers
        if "fp8" in chain or "int8" in chain:
            x = torch.from_numpy(raw.copy()).view(getattr(torch, dtype)).float()
            y = torch.from_numpy(buf.copy()).view(getattr(torch, dtype)).float()
            assert (x - y).abs().max() < 0.1 * x.abs().max() and header.payload_len < raw.nbytes
        else:
            assert np.array_equal(buf, raw)
        snap = a.metrics.snapshot()
        assert snap.counts["encoded_plain_bytes"] == raw.nbytes


def struct_version(data: bytes) -> int:
    return int.from_bytes(data[4:6], "little")


def test_a_plain_tier_still_writes_version_1(tmp_path):
    raw, meta = chunk()
    with open_adapter(f"fs://{tmp_path}") as a:
        a.store([StoreItem(key(1), raw, meta)])
        assert struct_version(Path(a.path_of(key(1))).read_bytes()) == 1


def test_corrupt_or_truncated_objects_are_misses(tmp_path):
    raw, meta = chunk()
    with open_adapter(f"fs://{tmp_path}?serde=fp8,zstd") as a:
        a.store([StoreItem(key(1), raw, meta), StoreItem(key(2), raw, meta)])
        p1, p2 = Path(a.path_of(key(1))), Path(a.path_of(key(2)))
        b = bytearray(p1.read_bytes())
        b[-7] ^= 0x10
        p1.write_bytes(bytes(b))
        p2.write_bytes(p2.read_bytes()[:-100])
        for k, reason in ((key(1), "bad_checksum"), (key(2), "truncated")):
            r, buf, _ = load(a, k, raw.nbytes)
            assert (r.status, r.reason) == (Status.CORRUPT, reason) and not buf.any()


def test_wrong_master_key_missing_key_and_a_copied_object_are_misses_left_in_place(tmp_path, key_file):
    raw, meta = chunk()
    root = tmp_path / "kv"
    other = tmp_path / "keys" / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    with open_adapter(f"fs://{root}?serde=zstd,aesgcm:key_file={key_file}") as a:
        a.store([StoreItem(key(1, salt="aaaa"), raw, meta)])
        # the same object under another key (header rewritten, valid crc): authentication fails
        data = Path(a.path_of(key(1, salt="aaaa"))).read_bytes()
        h = of.decode_header(data)
        payload = data[h.header_len :]
        for n, salt in ((2, "aaaa"), (3, "bbbb")):
            copy = of.encode_header(key(n, salt=salt), h.meta, payload, len(payload), h.algorithm) + payload
            Path(a.path_of(key(n, salt=salt))).write_bytes(copy)
        for n, salt in ((2, "aaaa"), (3, "bbbb")):
            r, buf, _ = load(a, key(n, salt=salt), raw.nbytes)
            assert (r.status, r.reason) == (Status.UNVERIFIABLE, "aesgcm_auth_failed") and not buf.any()
        r, buf, _ = load(a, key(1, salt="aaaa"), raw.nbytes)
        assert r.status is Status.HIT and np.array_equal(buf, raw)
    before = sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    for url, reason in ((f"fs://{root}?serde=aesgcm:key_file={other}", "aesgcm_wrong_key"),
                        (f"fs://{root}", "aesgcm_no_key")):  # fmt: skip
        with open_adapter(url) as b:
            r, buf, _ = load(b, key(1, salt="aaaa"), raw.nbytes)
            assert (r.status, r.reason) == (Status.UNVERIFIABLE, reason) and not buf.any()
            assert b.lookup([key(1, salt="aaaa")]) == [False]  # remembered as bad
    assert sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before


def test_a_key_file_not_0600_refuses_the_tier(tmp_path, key_file):
    key_file.chmod(0o644)
    with pytest.raises(ValueError, match="expected mode 0600, given 0644"):
        open_adapter(f"fs://{tmp_path}?serde=aesgcm:key_file={key_file}")


def test_a_reader_older_than_version_2_leaves_encoded_objects_alone(tmp_path, monkeypatch):
    raw, meta = chunk()
    with open_adapter(f"fs://{tmp_path}?serde=zstd") as a:
        a.store([StoreItem(key(1), raw, meta)])
        path = Path(a.path_of(key(1)))
        before = path.read_bytes()
        monkeypatch.setattr(of, "VERSIONS", (1,))
        monkeypatch.setattr(of, "VERSION", 1)
        r, buf, _ = load(a, key(1), raw.nbytes)
        assert (r.status, r.reason) == (Status.UNVERIFIABLE, "newer_version") and not buf.any()
        assert path.read_bytes() == before


PROC = textwrap.dedent(
    """
    import json, sys
    if sys.argv[3] == "no-blosc2":
        sys.modules["blosc2"] = None  # this reader lacks the library of zstd
    import numpy as np, torch
    from lmcache_core.storage import open_adapter
    from lmcache_core.storage.adapter import LoadRequest, StoreItem
    from lmcache_core.storage.object_format import ObjectMeta
    url, mode = sys.argv[1], sys.argv[2]
    x = (torch.arange(2 * 3 * 16 * 64, dtype=torch.float32) % 97 / 8).to(torch.bfloat16)
    raw = x.view(torch.uint8).numpy()
    meta = ObjectMeta("kv2.L3.h64.bfloat16", "bfloat16", (2, 3, 16, 64), 16)
    keys = ["tiny|kv2.L3.h64.bfloat16|tp1.0|-|%04x" % i for i in range(3)]
    with open_adapter(url) as a:
        if mode == "write":
            print(json.dumps([r.status.value for r in a.store([StoreItem(k, raw, meta) for k in keys])]))
        else:
            bufs = [np.zeros(raw.nbytes, np.uint8) for _ in keys]
            rs = a.load([LoadRequest(k, lambda h, b=b: b) for k, b in zip(keys, bufs)])
            print(json.dumps([[r.status.value, r.reason, bool(np.array_equal(b, raw))] for r, b in zip(rs, bufs)]))
    """
)


def run(script, *args):
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_chain_is_honoured_across_processes_and_a_reader_without_the_codec_misses(tmp_path):
    script = tmp_path / "proc.py"
    script.write_text(PROC)
    root = tmp_path / "kv"
    assert run(script, f"fs://{root}?serde=zstd:level=3", "write", "-") == ["ok"] * 3
    before = sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file())
    # a new process with no chain configured decodes from the header
    assert run(script, f"fs://{root}", "read", "-") == [["hit", "", True]] * 3
    # a new process that lacks the codec's library: a miss with the reason, nothing deleted
    assert run(script, f"fs://{root}", "read", "no-blosc2") == [["unverifiable", "missing_codec", False]] * 3
    assert sorted((p.name, p.read_bytes()) for p in root.rglob("*") if p.is_file()) == before


def test_redis_tier_round_trips_a_chain_and_rejects_a_wrong_key(redis_server, key_file, tmp_path):
    raw, meta = chunk()
    other = tmp_path / "keys" / "other.key"
    other.write_bytes(os.urandom(32))
    other.chmod(0o600)
    url = f"{redis_server.url}?prefix=serde:&serde=fp8,lz4,aesgcm:key_file="
    with open_adapter(url + str(key_file)) as a:
        assert a.store([StoreItem(key(7), raw, meta)])[0].status is Status.OK
        r, buf, _ = load(a, key(7), raw.nbytes)
        assert r.status is Status.HIT and r.header.payload_len == raw.nbytes and buf.any()
    with open_adapter(url + str(other)) as b:
        r, buf, _ = load(b, key(7), raw.nbytes)
        assert (r.status, r.reason) == (Status.UNVERIFIABLE, "aesgcm_wrong_key") and not buf.any()
    with open_adapter(url + str(key_file)) as a:  # left in place: the right key still reads it
        assert load(a, key(7), raw.nbytes)[0].status is Status.HIT
