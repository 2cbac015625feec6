"""CacheService without sockets: keys, leases, expiry, quotas, tenants, errors, status."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

from lmcache_core.keys import salt_tag
from lmcache_core.layout import ChunkFormat
from lmcache_core.server import protocol as p
from lmcache_core.server.client import format_descs, token_bytes
from lmcache_core.server.config import ServerConfig
from lmcache_core.server.service import CacheService

FMT = ChunkFormat.uniform(2, 2, 32, "float32", 4)  # 2 layers, K and V, 32 channels: 512 B a token
CHUNK = 16


@pytest.fixture
def service():
    shm = tempfile.mkdtemp(prefix="lmcache-test-shm-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    svc = CacheService(ServerConfig(listen="ipc:///unused", l1_bytes=2**20, chunk_size=CHUNK, shm_dir=shm,
                                    lease_seconds=1.0, heartbeat_seconds=0.25,
                                    salt_quota_bytes={"small": 4 * CHUNK * 512}))  # fmt: skip
    yield svc
    svc.close(0)
    assert not os.listdir(shm), "close must unlink every segment"
    os.rmdir(shm)


def connect(svc: CacheService, peer: bytes, rank: int = 0) -> None:
    r = svc.handle(peer, p.Hello(rid=1, version=p.PROTOCOL_VERSION, client="t"))
    assert isinstance(r, p.HelloReply) and r.rid == 1 and r.chunk_size == CHUNK
    r = svc.handle(
        peer,
        p.Register(rid=2, engine="e", model_id="m", rank=rank, world_size=2, formats=format_descs([FMT])),
    )
    assert isinstance(r, p.RegisterReply) and r.spec_tag == FMT.tag


def store(
    svc: CacheService, peer: bytes, tokens: np.ndarray, salt: str | None = None, fill: int = 7
) -> p.CommitReply:
    lease = svc.handle(peer, p.PrepareStore(tokens=token_bytes(tokens), salt=salt))
    assert isinstance(lease, p.PrepareReply), lease
    for i, slot in enumerate(lease.slots):
        view = svc.arena.locate  # the slot names a range of a live segment
        assert view is not None
        seg = next(s for s in svc.arena._segments if s.name == slot.segment)
        seg.tensor[slot.offset : slot.offset + slot.nbytes].fill_(fill + i)
    done = svc.handle(peer, p.CommitStore(lease=lease.lease, filled=len(lease.slots)))
    assert isinstance(done, p.CommitReply), done
    return done


def read(svc: CacheService, slot: p.Slot) -> torch.Tensor:
    seg = next(s for s in svc.arena._segments if s.name == slot.segment)
    return seg.tensor[slot.offset : slot.offset + slot.nbytes].clone()


TOKENS = np.arange(40, dtype=np.uint32)  # 2 full chunks + 8 tokens


def test_store_then_lookup_and_retrieve_the_same_bytes(service: CacheService) -> None:
    connect(service, b"a")
    done = store(service, b"a", TOKENS)
    assert (done.chunks, done.tokens, done.nbytes) == (3, 40, 40 * 512)
    found = service.handle(b"a", p.Lookup(tokens=token_bytes(TOKENS)))
    assert isinstance(found, p.LookupReply) and (found.tokens, found.chunks, found.nbytes) == (
        40,
        3,
        40 * 512,
    )
    lease = service.handle(b"a", p.PrepareRetrieve(tokens=token_bytes(TOKENS), skip=20))
    assert isinstance(lease, p.PrepareReply)
    assert [(s.start, s.end) for s in lease.slots] == [(16, 32), (32, 40)]
    assert [int(read(service, s)[0]) for s in lease.slots] == [8, 9]
    assert all(bool((read(service, s) == v).all()) for s, v in zip(lease.slots, (8, 9), strict=True))
    done = service.handle(b"a", p.CommitRetrieve(lease=lease.lease))
    assert isinstance(done, p.CommitReply) and (done.chunks, done.tokens) == (2, 20)
    again = service.handle(b"a", p.PrepareStore(tokens=token_bytes(TOKENS)))
    assert isinstance(again, p.PrepareReply) and again.slots == [] and again.present == 3


def test_engines_share_a_scope_and_ranks_and_salts_do_not(service: CacheService) -> None:
    connect(service, b"a")
    connect(service, b"b")
    connect(service, b"r1", rank=1)
    store(service, b"a", TOKENS)
    hit = service.handle(b"b", p.Lookup(tokens=token_bytes(TOKENS)))
    assert isinstance(hit, p.LookupReply) and hit.tokens == 40
    other_rank = service.handle(b"r1", p.Lookup(tokens=token_bytes(TOKENS)))
    assert isinstance(other_rank, p.LookupReply) and other_rank.tokens == 0
    salted = service.handle(b"b", p.Lookup(tokens=token_bytes(TOKENS), salt="tenant"))
    assert isinstance(salted, p.LookupReply) and salted.tokens == 0


def test_stop_limits_the_stored_chunks(service: CacheService) -> None:
    connect(service, b"a")
    lease = service.handle(b"a", p.PrepareStore(tokens=token_bytes(TOKENS), stop=20))
    assert isinstance(lease, p.PrepareReply) and [(s.start, s.end) for s in lease.slots] == [(0, 16)]


def test_partial_commit_publishes_the_filled_prefix_only(service: CacheService) -> None:
    connect(service, b"a")
    lease = service.handle(b"a", p.PrepareStore(tokens=token_bytes(TOKENS)))
    assert isinstance(lease, p.PrepareReply) and len(lease.slots) == 3
    done = service.handle(b"a", p.CommitStore(lease=lease.lease, filled=1))
    assert isinstance(done, p.CommitReply) and done.chunks == 1
    found = service.handle(b"a", p.Lookup(tokens=token_bytes(TOKENS)))
    assert isinstance(found, p.LookupReply) and found.tokens == 16
    assert service.status()["l1"]["leased_bytes"] == 0


def test_silent_session_loses_its_leases(service: CacheService) -> None:
    connect(service, b"a")
    store(service, b"a", TOKENS[:16])
    base = service.status()["l1"]
    lease = service.handle(b"a", p.PrepareStore(tokens=token_bytes(TOKENS)))
    pinned = service.handle(b"a", p.PrepareRetrieve(tokens=token_bytes(TOKENS)))
    assert isinstance(lease, p.PrepareReply) and len(lease.slots) == 2
    assert isinstance(pinned, p.PrepareReply) and len(pinned.slots) == 1
    assert service.status()["l1"]["leased_bytes"] == 24 * 512
    now = service._sessions[b"a"].last_seen
    assert service.sweep(now + 0.5) == 0
    assert service.sweep(now + 1.5) == 1
    st = service.status()
    assert st["engines"] == [] and st["hits"]["leases_expired"] == 2
    assert st["l1"]["leased_bytes"] == 24 * 512, "store buffers stay quarantined for lease_seconds"
    service.sweep(now + 3.0)
    st = service.status()["l1"]
    assert (st["leased_bytes"], st["entry_bytes"], st["entries"]) == (0, base["entry_bytes"], base["entries"])
    assert all(e.pins == 0 for e in service.l1._entries.values())
    late = service.handle(b"a", p.CommitStore(lease=lease.lease, filled=2))
    assert isinstance(late, p.Error) and late.code == "hello_first"
    connect(service, b"a")
    late = service.handle(b"a", p.CommitRetrieve(lease=pinned.lease))
    assert isinstance(late, p.Error) and late.code == "lease_expired"
    again = service.handle(b"a", p.PrepareStore(tokens=token_bytes(TOKENS)))
    assert isinstance(again, p.PrepareReply) and len(again.slots) == 2, "expired keys can be stored again"


def test_salt_quota_evicts_its_own_chunks_only(service: CacheService) -> None:
    connect(service, b"a")
    store(service, b"a", TOKENS)  # unsalted: 40 tokens
    many = np.arange(1000, 1000 + 6 * CHUNK, dtype=np.uint32)
    lease = service.handle(b"a", p.PrepareStore(tokens=token_bytes(many), salt="small"))
    assert isinstance(lease, p.PrepareReply)
    assert len(lease.slots) == 4 and lease.full, "the quota is 4 chunks"
    service.handle(b"a", p.CommitStore(lease=lease.lease, filled=4))
    other = np.arange(5000, 5000 + 2 * CHUNK, dtype=np.uint32)
    done = store(service, b"a", other, salt="small")
    assert done.chunks == 2, "a full salt evicts its own least recently used chunks"
    salts = service.status()["salts"]
    assert salts[salt_tag("small")]["bytes"] == 4 * CHUNK * 512
    assert salts[salt_tag(None)]["bytes"] == 40 * 512
    unsalted = service.handle(b"a", p.Lookup(tokens=token_bytes(TOKENS)))
    assert isinstance(unsalted, p.LookupReply) and unsalted.tokens == 40, "other tenants are never evicted"


@pytest.mark.parametrize(
    ("request_", "code"),
    [
        (p.Lookup(tokens=b"\x00\x01\x02"), "bad_request"),
        (p.CommitStore(lease=999, filled=0), "lease_unknown"),
        (p.CommitRetrieve(lease=999), "lease_unknown"),
        (p.Release(lease=999), "lease_unknown"),
    ],
)
def test_bad_requests_get_errors(service: CacheService, request_: p.Request, code: str) -> None:
    connect(service, b"a")
    r = service.handle(b"a", request_)
    assert isinstance(r, p.Error) and r.code == code, r
    assert service.handle(b"a", p.Heartbeat()) == p.HeartbeatReply(leases=0)


def test_handshake_order_and_version(service: CacheService) -> None:
    r = service.handle(b"x", p.Lookup(tokens=b""))
    assert isinstance(r, p.Error) and r.code == "hello_first"
    r = service.handle(b"x", p.Hello(version=p.PROTOCOL_VERSION + 1))
    assert isinstance(r, p.Error) and r.code == "version" and str(p.PROTOCOL_VERSION) in r.message
    service.handle(b"x", p.Hello(version=p.PROTOCOL_VERSION))
    r = service.handle(b"x", p.Lookup(tokens=b""))
    assert isinstance(r, p.Error) and r.code == "not_registered"
    r = service.handle(b"x", p.Register(formats=format_descs([FMT]), rank=2, world_size=2))
    assert isinstance(r, p.Error) and r.code == "bad_request" and "rank" in r.message
    r = service.handle(b"x", p.Register(formats=[]))
    assert isinstance(r, p.Error) and r.code == "bad_request" and "formats" in r.message


def test_status_lists_engines_l1_salts_tiers_and_hits(service: CacheService) -> None:
    connect(service, b"a")
    store(service, b"a", TOKENS, salt="t1")
    service.handle(b"a", p.Lookup(tokens=token_bytes(TOKENS), salt="t1"))
    service.handle(b"a", p.Lookup(tokens=token_bytes(np.arange(100, 140, dtype=np.uint32)), salt="t1"))
    st = service.status()
    assert [(e["engine"], e["rank"], e["world_size"]) for e in st["engines"]] == [("e", 0, 2)]
    assert st["salts"][salt_tag("t1")]["bytes"] == 40 * 512
    assert "t1" not in str(st), "the salt itself is never shown"
    assert st["tiers"] == []
    assert st["hits"]["hit_rate"] == 0.5
    assert st["l1"]["entries"] == 3
