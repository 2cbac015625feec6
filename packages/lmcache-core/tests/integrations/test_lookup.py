"""Scheduler -> worker lookups: in process through the table, across processes over a socket."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from lmcache_core.integrations.vllm import lookup

# A worker stand-in in its own interpreter: answers hit = number of even tokens, echoes the salt,
# sleeps when asked about a prompt starting with 999.
_CHILD = r"""
import sys, time
from lmcache_core.integrations.vllm import lookup

def handler(tokens, salt):
    if tokens and tokens[0] == 999:
        time.sleep(3)
    if tokens and tokens[0] == 666:
        raise RuntimeError("worker broke")
    return {"hit": sum(1 for t in tokens if t % 2 == 0), "salt": salt, "n": len(tokens)}

engine_id = sys.argv[1]
server = lookup.LookupServer(lookup.address(engine_id, 0, 0), handler, lookup.authkey(engine_id))
print("ready", flush=True)
sys.stdin.read()
server.close()
"""


@pytest.fixture
def child_server():
    engine_id = str(uuid.uuid4())
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, engine_id], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    yield engine_id
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(10)


def test_lookup_across_processes(child_server: str) -> None:
    addr = lookup.address(child_server, 0, 0)
    client = lookup.LookupClient([addr], lookup.authkey(child_server), timeout=10)
    tokens = list(range(5000))
    assert client.lookup(tokens, "tenant") == [{"hit": 2500, "salt": "tenant", "n": 5000}]
    assert client.lookup([2, 4, 5], None) == [{"hit": 2, "salt": None, "n": 3}]  # same connection
    with pytest.raises(lookup.LookupUnavailable, match="failed the lookup: RuntimeError: worker broke"):
        client.lookup([666], None)
    client.close()


def test_slow_or_unreachable_workers_are_unavailable_not_fatal(child_server: str) -> None:
    addr = lookup.address(child_server, 0, 0)
    client = lookup.LookupClient([addr], lookup.authkey(child_server), timeout=0.5)
    t0 = time.monotonic()
    with pytest.raises(lookup.LookupUnavailable, match=r"did not answer within 0\.5 s"):
        client.lookup([999], None)
    assert time.monotonic() - t0 < 2.5
    assert client.lookup([2], None)[0]["hit"] == 1  # a fresh connection; the late answer is dropped
    wrong_key = lookup.LookupClient([addr], b"not the key", timeout=1)
    with pytest.raises(lookup.LookupUnavailable, match="unreachable"):
        wrong_key.lookup([2], None)
    nobody = lookup.LookupClient([lookup.address("no-such-engine", 0, 0)], b"k", timeout=1)
    with pytest.raises(lookup.LookupUnavailable, match="unreachable"):
        nobody.lookup([2], None)


def test_same_process_handler_is_called_directly() -> None:
    addr = lookup.address(str(uuid.uuid4()), 3, 1)
    assert addr.endswith("-dp3-r1.sock")
    calls = []
    lookup.register_local(addr, lambda tokens, salt: calls.append((list(tokens), salt)) or {"hit": 7})
    try:
        client = lookup.LookupClient([addr, addr], b"unused", timeout=1)
        assert client.lookup([1, 2], "s") == [{"hit": 7}, {"hit": 7}]
        assert calls == [([1, 2], "s"), ([1, 2], "s")]
    finally:
        lookup.unregister_local(addr)
    with pytest.raises(lookup.LookupUnavailable):
        lookup.LookupClient([addr], b"unused", timeout=1).lookup([1], None)


def test_malformed_frames_get_an_error_reply_and_the_server_keeps_serving(child_server: str) -> None:
    from multiprocessing.connection import Client

    addr = lookup.address(child_server, 0, 0)
    key = lookup.authkey(child_server)
    with Client(addr, family="AF_UNIX", authkey=key) as conn:
        for junk in [
            b"",
            b"\xc1",
            b"\x80\x03]q\x00.",
            lookup._ENC.encode({"tokens": b"\0\0\0", "salt": None}),
        ]:
            conn.send_bytes(junk)  # empty, invalid msgpack, a pickle's header, tokens not uint32
            assert conn.poll(5), junk
            reply = lookup._DEC_REPLY.decode(conn.recv_bytes())
            assert reply.answer is None and reply.error, junk
        conn.send_bytes(lookup._ENC.encode(lookup.LookupRequest(lookup._pack([2, 3]), "s")))
        assert conn.poll(5)
        assert lookup._DEC_REPLY.decode(conn.recv_bytes()).answer == {"hit": 1, "salt": "s", "n": 2}
    client = lookup.LookupClient([addr], key, timeout=5)
    assert client.lookup([4], None) == [{"hit": 1, "salt": None, "n": 1}]
    client.close()
