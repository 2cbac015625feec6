"""Wire format: round trips, and every bad frame becomes a ProtocolError with the right code."""

from __future__ import annotations

import random

import msgspec
import pytest

from lmcache_core.server import protocol as p


@pytest.mark.parametrize("request_", [
    p.Hello(rid=1, version=p.PROTOCOL_VERSION, client="c"),
    p.Register(rid=2, engine="e", model_id="m", rank=1, world_size=2,
               formats=[p.FormatDesc(2, [p.SectionDesc("k", 64, "bfloat16", 2), p.SectionDesc("v", 64, "bfloat16", 2)])]),
    p.Lookup(rid=3, tokens=b"\x01\x00\x00\x00", salt="s", prefetch=False),
    p.PrepareStore(rid=4, tokens=b"", stop=7),
    p.CommitStore(rid=5, lease=9, filled=2),
    p.PrepareRetrieve(rid=6, skip=3),
    p.CommitRetrieve(rid=7, lease=9),
    p.Release(rid=8, lease=9),
    p.Heartbeat(rid=9),
    p.Stats(rid=10),
])  # fmt: skip
def test_every_request_round_trips(request_: p.Request) -> None:
    assert p.decode_request(p.encode(request_)) == request_


def test_replies_round_trip() -> None:
    for reply in (p.Error(rid=1, code="malformed", message="x"), p.PrepareReply(rid=2, lease=3, slots=[p.Slot(0, 16, "seg", 256, 8192, True)]),
                  p.StatsReply(rid=3, status={"a": [1, 2]}), p.HelloReply(rid=4)):  # fmt: skip
        assert p.decode_reply(p.encode(reply)) == reply


def test_unknown_op_names_the_ops_and_keeps_rid() -> None:
    with pytest.raises(p.ProtocolError) as e:
        p.decode_request(msgspec.msgpack.encode({"op": "exec", "rid": 42, "code": "import os"}))
    assert e.value.code == "unknown_op" and e.value.rid == 42 and "lookup" in str(e.value)


def test_oversized_frame_is_refused_before_decoding() -> None:
    frame = p.encode(p.Lookup(tokens=b"\0" * 4000))
    with pytest.raises(p.ProtocolError) as e:
        p.decode_request(frame, max_bytes=1000)
    assert e.value.code == "too_large" and str(len(frame)) in str(e.value)


@pytest.mark.parametrize("frame", [
    b"", b"\xc1", b"\x93\x01\x02\x03", msgspec.msgpack.encode({"op": "lookup", "rid": 1, "tokens": 5}),
    msgspec.msgpack.encode({"op": "lookup", "rid": 1, "evil": 1}),
    msgspec.msgpack.encode({"op": "commit_store", "rid": 1, "lease": -1}),
    msgspec.msgpack.encode({"op": "hello", "rid": 2**64 - 1}),
    msgspec.msgpack.encode({"op": "register", "formats": [[0, []]]}),
    b"\x91" * 100000 + b"\xc0",  # deep nesting
])  # fmt: skip
def test_malformed_frames(frame: bytes) -> None:
    with pytest.raises(p.ProtocolError) as e:
        p.decode_request(frame)
    assert e.value.code == "malformed"


def test_random_and_truncated_frames_never_escape_as_other_errors() -> None:
    rng = random.Random(15)
    valid = [
        p.encode(p.Lookup(rid=i, tokens=bytes(rng.randrange(256) for _ in range(4 * i)), salt="s"))
        for i in range(20)
    ]
    for _ in range(3000):
        kind = rng.randrange(3)
        if kind == 0:
            frame = bytes(rng.randrange(256) for _ in range(rng.randrange(64)))
        elif kind == 1:
            v = rng.choice(valid)
            frame = v[: rng.randrange(len(v))]
        else:
            v = bytearray(rng.choice(valid))
            v[rng.randrange(len(v))] = rng.randrange(256)
            frame = bytes(v)
        try:
            got = p.decode_request(frame)
        except p.ProtocolError as e:
            assert e.code in ("malformed", "unknown_op")
        else:
            assert isinstance(got, p.REQUESTS)


def test_tokens_from_bytes() -> None:
    assert p.tokens_from_bytes(b"\x01\x00\x00\x00\x02\x00\x00\x00").tolist() == [1, 2]
    with pytest.raises(ValueError, match="multiple of 4"):
        p.tokens_from_bytes(b"\x01\x00")
