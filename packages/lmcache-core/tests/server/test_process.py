"""The server as a real process: engines (RemoteCacheEngine) against it, kill -9 of a client
mid-store and of the server mid-run, protocol fuzzing on its socket, SIGTERM draining, HTTP and
``lmcache-core status``."""

from __future__ import annotations

import json
import os
import random
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
import zmq

from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout import ChunkFormat
from lmcache_core.layout_registry import LayoutHints
from lmcache_core.server import protocol as p
from lmcache_core.server.client import CacheClient, ServerUnavailable
from lmcache_core.server.remote import RemoteCacheEngine

HERE = Path(__file__).parent
HINTS = LayoutHints(kind="vllm_flash_nhd")
LAYERS, BLOCKS, BLOCK, HEADS, HD = 2, 8, 16, 2, 16  # 2 layers * 2 heads * 16 = 64 channels: 512 B a token


def kv(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, BLOCKS, BLOCK, HEADS, HD, generator=g) for _ in range(LAYERS)]


def rows(caches: list[torch.Tensor], n: int) -> list[torch.Tensor]:
    return [c.flatten(1, 2)[:, :n] for c in caches]


def engine(endpoint: str, name: str, **opts) -> RemoteCacheEngine:
    return RemoteCacheEngine(
        endpoint, CacheEngineConfig(model_id="m"), engine=name, layout_hints=HINTS, **opts
    )


def status(endpoint: str) -> dict:
    with CacheClient(endpoint, heartbeat=False) as c:
        return c.stats()


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.1)


TOKENS = np.arange(100, 100 + 56, dtype=np.uint32)  # 3 full chunks of 16 + 8
SLOTS = torch.arange(56, dtype=torch.int64)


def test_engine_b_hits_what_engine_a_stored_byte_for_byte(server) -> None:
    a = engine(server.endpoint, "A")
    src, dst = kv(1), [torch.zeros(2, BLOCKS, BLOCK, HEADS, HD) for _ in range(LAYERS)]
    a.register_kv_caches(src)
    # B starts as a scheduler would: chunk formats only, no KV
    b = engine(server.endpoint, "B", chunk_formats=[a.spec.groups[0].chunk_format])
    assert b.lookup(TOKENS).tokens == 0
    stored = a.store(TOKENS, src, SLOTS)
    assert (stored.tokens, stored.chunks, stored.nbytes) == (56, 4, 56 * 512)
    assert b.lookup(TOKENS).tokens == 56
    got = b.retrieve(TOKENS, dst, SLOTS)
    assert (got.tokens, got.chunks) == (56, 4)
    assert all(torch.equal(x, y) for x, y in zip(rows(src, 56), rows(dst, 56), strict=True))
    # the same bytes as the in-process engine's chunks
    local = CacheEngine(CacheEngineConfig(model_id="m", chunk_size=16, l1_bytes=2**24), layout_hints=HINTS)
    local.store(TOKENS, src, SLOTS)
    local.wait_stores()
    dst2 = [torch.zeros_like(t) for t in src]
    assert local.retrieve(TOKENS, dst2, SLOTS, 20).tokens == 36
    dst3 = [torch.zeros_like(t) for t in src]
    assert b.retrieve(TOKENS, dst3, SLOTS, 20).tokens == 36
    assert all(torch.equal(x, y) for x, y in zip(dst2, dst3, strict=True)), (
        "skip_leading_tokens as in-process"
    )
    doc = b.server_status()
    assert sorted(e["engine"] for e in doc["engines"]) == ["A", "B"]
    a.close()
    b.close()


def test_client_killed_mid_store_loses_its_leases(server) -> None:
    keeper = engine(server.endpoint, "keeper")
    keeper.store(TOKENS, kv(2), SLOTS)
    base = status(server.endpoint)["l1"]
    child = subprocess.Popen([sys.executable, str(HERE / "store_and_hang.py"), server.endpoint, "6"],
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line.startswith("prepared "), line
        leased = int(line.split()[1])
        during = status(server.endpoint)["l1"]
        assert during["leased_bytes"] == leased == 6 * 16 * 512 and during["store_leases"] == 1
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
        after = wait_for(
            lambda: (s := status(server.endpoint)["l1"])["leased_bytes"] == 0 and s, 10, "leases back"
        )
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
            child.wait(10)
    for k in ("entry_bytes", "entries", "store_leases", "pinned_retrieve_leases"):
        assert after[k] == base[k], k
    doc = status(server.endpoint)
    assert doc["hits"]["leases_expired"] == 1 and [e["engine"] for e in doc["engines"]] == ["keeper"]
    with CacheClient(server.endpoint) as c:  # the victim's chunks can be stored by someone else
        c.register("other", model_id="m", formats=[keeper.spec.groups[0].chunk_format])
        lease = c.prepare_store(np.arange(10_000, 10_000 + 96, dtype=np.uint32))
        assert len(lease.slots) == 6
        c.release(lease.lease)
    assert keeper.lookup(TOKENS).tokens == 56, "the keeper's entries survived"
    keeper.close()


def test_server_killed_mid_run_engines_miss_then_hit_from_l2(launch, tmp_path) -> None:
    l2 = f"fs://{tmp_path}/l2"
    flags = (
        "--l1-bytes",
        "64M",
        "--chunk-size",
        "16",
        "--l2-urls",
        l2,
        "--lease-seconds",
        "1",
        "--heartbeat-seconds",
        "0.25",
    )
    s1 = launch(*flags)
    e = engine(s1.endpoint, "A", timeout=3.0, backoff_min=0.2, backoff_max=0.5)
    src = kv(3)
    try:
        assert e.store(TOKENS, src, SLOTS).chunks == 4
        wait_for(lambda: sum(t["counts"].get("write_ok", 0) + t["counts"].get("stored", 0) for t in status(s1.endpoint)["tiers"])
                 or len(list((tmp_path / "l2").rglob("*"))) > 4, 10, "write-behind")  # fmt: skip
        time.sleep(0.5)
        segments = s1.segments()
        assert segments
        assert s1.stop(signal.SIGKILL) == -signal.SIGKILL
        assert s1.segments() == segments, "a killed server leaves its segments"
        dst = [torch.zeros_like(t) for t in src]
        assert e.lookup(TOKENS).tokens == 0 and e.retrieve(TOKENS, dst, SLOTS).tokens == 0
        assert e.store(TOKENS, src, SLOTS).tokens == 0, "no server: nothing stored, no exception"
        assert e.failures >= 3
        s2 = launch(*flags)
        try:
            assert not set(segments) & set(s2.segments()), "the restart removed the dead server's segments"
            assert any(
                f"removed {len(segments)} stale shared-memory segments" in line for line in s2.lines
            ), s2.lines
            hit = wait_for(lambda: (r := e.lookup(TOKENS)).tokens and r, 10, "reconnect")
            assert (hit.tokens, hit.l2_tokens) == (56, 56), "after the restart the hit is L2's"
            got = e.retrieve(TOKENS, dst, SLOTS)
            assert got.tokens == 56
            assert all(torch.equal(x, y) for x, y in zip(rows(src, 56), rows(dst, 56), strict=True))
        finally:
            e.close()
            assert s2.stop() == 0
        assert s2.segments() == []
    finally:
        s1.stop(signal.SIGKILL)


def test_fuzzed_frames_get_errors_and_lose_no_entries(server) -> None:
    e = engine(server.endpoint, "A")
    src = kv(4)
    e.store(TOKENS, src, SLOTS)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(server.endpoint)
    rng = random.Random(1515)
    valid = [
        p.encode(m) for m in (p.Hello(version=1), p.Lookup(tokens=TOKENS.tobytes()), p.Heartbeat(), p.Stats())
    ]
    frames = []
    for i in range(400):
        k = i % 4
        if k == 0:
            frames.append([bytes(rng.randrange(256) for _ in range(rng.randrange(200)))])
        elif k == 1:
            v = rng.choice(valid)
            frames.append([v[: rng.randrange(len(v))]])
        elif k == 2:
            frames.append(
                [msgspec.msgpack.encode({"op": rng.choice(["exec", "eval", "shell", "dump_env"]), "rid": i})]
            )
        else:
            frames.append([b"x", b"y"])  # two frames in one message
    frames.append([b"\0" * (9 * 2**20)])  # over max_message_bytes (8 MiB), under the transport cap
    codes = {}
    for f in frames:
        sock.send_multipart(f)
        assert sock.poll(5000), "the server stopped answering"
        r = p.decode_reply(sock.recv())
        if isinstance(r, p.Error):
            codes[r.code] = codes.get(r.code, 0) + 1
    assert {"malformed", "unknown_op", "too_large"} <= set(codes)
    sock.close()
    ctx.term()
    dst = [torch.zeros_like(t) for t in src]
    assert e.retrieve(TOKENS, dst, SLOTS).tokens == 56
    assert all(torch.equal(x, y) for x, y in zip(rows(src, 56), rows(dst, 56), strict=True))
    e.close()


def test_http_endpoints_and_status_command(server) -> None:
    path = server.endpoint[len("ipc://") :]
    assert stat.S_ISSOCK(os.stat(path).st_mode) and os.stat(path).st_mode & 0o777 == 0o600
    assert all(os.stat(os.path.join(server.shm_dir, n)).st_mode & 0o777 == 0o600 for n in server.segments())
    base = f"http://{server.http}"
    assert urllib.request.urlopen(base + "/healthz").read() == b"ok\n"

    def ready() -> bool:  # 503 until the request loop runs (the socket is bound before it starts)
        try:
            return urllib.request.urlopen(base + "/readyz").status == 200
        except urllib.error.HTTPError as e:
            assert e.code == 503 and e.read() == b"not ready\n"
            return False

    wait_for(ready, 30, "/readyz 200")
    e = engine(server.endpoint, "A")
    e.store(TOKENS, kv(5), SLOTS, cache_salt="tenant")
    e.lookup(TOKENS, cache_salt="tenant")
    doc = json.loads(urllib.request.urlopen(base + "/status").read())
    assert [x["engine"] for x in doc["engines"]] == ["A"] and doc["hits"]["hit_rate"] == 1.0
    assert list(doc["salts"]) and "tenant" not in json.dumps(doc)
    metrics = urllib.request.urlopen(base + "/metrics").read().decode()
    assert "lmcache_server_l1_entries 4.0" in metrics and "lmcache_server_hit_rate 1.0" in metrics
    for path, method in (("/env", "GET"), ("/run", "POST"), ("/status", "POST")):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(
                urllib.request.Request(base + path, data=b"x" if method == "POST" else None, method=method)
            )
        assert err.value.code in (404, 405)
    out = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "status", "--server", server.endpoint],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (
        "engine" in out.stdout and " A " in out.stdout and "hit rate" in out.stdout and "1.000" in out.stdout
    )
    e.close()
    gone = subprocess.run([sys.executable, "-m", "lmcache_core.cli.main", "status", "--server", "ipc:///nonexistent/x.sock",
                           "--timeout", "0.5"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert gone.returncode == 2 and "no reply" in gone.stderr


def test_sigterm_drains_write_behind_and_cleans_up(launch, tmp_path) -> None:
    s = launch(
        "--l1-bytes", "64M", "--chunk-size", "16", "--l2-urls", f"fs://{tmp_path}/l2", "--drain-seconds", "20"
    )
    try:
        e = engine(s.endpoint, "A")
        many = np.arange(0, 16 * 40, dtype=np.uint32)
        slots = torch.arange(16 * 40, dtype=torch.int64) % (BLOCKS * BLOCK)
        assert e.store(many, kv(6), slots).chunks == 40
        e.close()
        assert s.stop() == 0
        assert s.segments() == [] and not os.path.exists(s.endpoint[len("ipc://") :])
        time.sleep(0.2)  # the reader thread takes the last lines
        out = "".join(s.lines)
        assert "write-behind drained" in out, out[-2000:]
    finally:
        s.stop(signal.SIGKILL)
    s2 = launch("--l1-bytes", "64M", "--chunk-size", "16", "--l2-urls", f"fs://{tmp_path}/l2")
    try:
        e = engine(s2.endpoint, "B", chunk_formats=[ChunkFormat.uniform(2, LAYERS, HEADS * HD, "float32", 4)])
        assert e.lookup(many).tokens == 16 * 40, "every chunk reached L2 before exit"
        e.close()
    finally:
        s2.stop()


def test_unreachable_server_is_a_clean_miss(dirs) -> None:
    e = engine(f"ipc://{dirs[0]}/nobody.sock", "A", timeout=0.3, backoff_min=0.1)
    src = kv(7)
    t0 = time.monotonic()
    assert e.lookup(TOKENS).tokens == 0
    assert e.store(TOKENS, src, SLOTS).tokens == 0
    assert e.retrieve(TOKENS, [torch.zeros_like(t) for t in src], SLOTS).tokens == 0
    assert time.monotonic() - t0 < 5
    with pytest.raises(ServerUnavailable):
        e.client.stats()
    e.close()


def test_a_session_the_server_forgot_reconnects_by_itself(server) -> None:
    e = engine(server.endpoint, "A", heartbeat=False)
    src = kv(8)
    assert e.store(TOKENS, src, SLOTS).chunks == 4
    first = e.client.connects
    wait_for(lambda: not status(server.endpoint)["engines"], 10, "the silent session dropped")
    assert e.lookup(TOKENS).tokens == 56, "hello_first -> hello, register again, and the lookup is answered"
    assert e.client.connects == first + 1 and e.failures == 0
    e.close()
