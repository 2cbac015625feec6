import struct
import zlib

import numpy as np
import pytest

from lmcache_core.storage import object_format as of
from lmcache_core.storage.object_format import CorruptObject, ObjectMeta, UnverifiableObject

META = ObjectMeta("kv2.L3.h16.float16", "float16", (2, 3, 16, 16), 16)


def payload(n=3072, seed=0):
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)


@pytest.mark.parametrize("algo", ["xxh3", "crc32"])
def test_round_trip_checks_every_field(algo):
    data = payload()
    obj = of.encode_object("model|k|1", META, data, of.parse_algorithm(algo))
    header, body = of.split_object(obj, expect_key="model|k|1")
    assert header.meta == META and header.payload_len == data.nbytes and header.key == "model|k|1"
    assert header.header_len % of.HEADER_ALIGN == 0 and header.total_len == len(obj)
    assert bytes(body) == data.tobytes()


def test_header_padding_for_direct_io():
    data = payload()
    h = of.encode_header("k", META, data, data.nbytes, of.CRC32, align=4096)
    assert len(h) == 4096 and of.decode_header(h).header_len == 4096


@pytest.mark.parametrize(
    ("mutate", "reason", "removable"),
    [
        (lambda b: b.__setitem__(0, ord("X")), "foreign_format", False),  # another format: not ours
        (lambda b: struct.pack_into("<H", b, 4, 99), "newer_version", False),  # a rolling upgrade
        (lambda b: b.__setitem__(24, 7), "unverifiable", False),  # unknown checksum id (crc fixed below)
        (lambda b: b.__setitem__(slice(0, 4), b"\0\0\0\0"), "zeroed", True),  # a torn write
        (lambda b: struct.pack_into("<I", b, 32, 17), "bad_header", True),  # num_tokens changed: header crc
        (lambda b: b.__setitem__(-1, b[-1] ^ 1), "bad_checksum", True),  # one payload bit
        (lambda b: b.__delitem__(slice(-10, None)), "truncated", True),
        (lambda b: b.extend(b"extra"), "truncated", True),
        (lambda b: b.__delitem__(slice(20, None)), "truncated", True),  # our magic, cut short
    ],
)
def test_any_damage_is_detected(mutate, reason, removable):
    obj = bytearray(of.encode_object("k", META, payload()))
    mutate(obj)
    if reason == "unverifiable":  # a valid header of a newer writer's checksum algorithm
        used = of.FIXED_SIZE + 8 * 4 + 1 + len(META.fmt) + len(META.dtype)
        struct.pack_into("<I", obj, 36, 0)
        struct.pack_into("<I", obj, 36, zlib.crc32(bytes(obj[:used])))
    with pytest.raises(CorruptObject) as e:
        of.split_object(bytes(obj), expect_key="k")
    assert e.value.reason == reason
    assert e.value.removable is removable
    assert isinstance(e.value, UnverifiableObject) is not removable


def test_an_object_under_another_key_is_rejected():
    obj = of.encode_object("key-a", META, payload())
    with pytest.raises(CorruptObject, match="wrong_key"):
        of.split_object(obj, expect_key="key-b")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"checksum: expected one of \['crc32', 'xxh3'\], given 'md5'"):
        of.parse_algorithm("md5")
    with pytest.raises(ValueError, match="key/meta"):
        of.encode_header("k" * 5000, META, b"", 0, of.CRC32)


def test_checksum_algorithms_agree_with_their_libraries():
    import zlib

    data = payload(1 << 16)
    assert of.checksum(of.CRC32, data) == zlib.crc32(data)
    if of.has_xxhash():
        import xxhash

        assert of.checksum(of.XXH3_64, data) == xxhash.xxh3_64_intdigest(data)
