import numpy as np
import pytest

pytest.importorskip("boto3")

from lmcache_core.storage import open_adapter
from lmcache_core.storage.adapter import LoadRequest, Status, StoreItem
from lmcache_core.storage.object_format import ObjectMeta


def content(i: int, size: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, size, dtype=np.uint8)


def url(bucket, **params):
    endpoint, name = bucket
    extra = "".join(f"&{k}={v}" for k, v in params.items())
    return f"s3://{name}/kv/v1?endpoint_url={endpoint}&region=us-east-1{extra}"


def run(a, ids, size):
    meta = ObjectMeta("fmt", "uint8", (size,), 16)
    stored = a.store([StoreItem(f"k{i}", content(i, size), meta) for i in ids])
    bufs = {i: np.zeros(size, np.uint8) for i in ids}
    loaded = a.load([LoadRequest(f"k{i}", (lambda b: lambda h: b)(bufs[i])) for i in ids])
    return stored, loaded, bufs


def test_round_trip_lookup_delete(s3_bucket):
    import boto3

    with open_adapter(url(s3_bucket)) as a:
        stored, loaded, bufs = run(a, range(5), 10_000)
        assert [r.status for r in stored] == [Status.OK] * 5
        assert [r.status for r in loaded] == [Status.HIT] * 5
        assert all(np.array_equal(bufs[i], content(i, 10_000)) for i in range(5))
        assert a.lookup(["k0", "k9"]) == [True, False]
        assert a.load([LoadRequest("k9", lambda h: None)])[0].status is Status.MISS
        assert a.delete(["k0", "k1"]) == [True, True] and a.lookup(["k0"]) == [False]
    endpoint, name = s3_bucket
    listed = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=name)["Contents"]
    assert len(listed) == 3 and all(o["Key"].startswith("kv/v1/") for o in listed)


def test_large_chunk_goes_multipart(s3_bucket):
    import boto3

    size = 11 << 20  # > 5 MiB threshold: three parts
    with open_adapter(url(s3_bucket, multipart_threshold="5M", multipart_chunksize="5M")) as a:
        stored, loaded, bufs = run(a, [7], size)
        assert stored[0].status is Status.OK and loaded[0].status is Status.HIT
        assert np.array_equal(bufs[7], content(7, size))
        endpoint, name = s3_bucket
        head = boto3.client("s3", endpoint_url=endpoint).head_object(Bucket=name, Key=a.object_key("k7"))
        assert head["ETag"].strip('"').endswith("-3")  # a multipart upload's ETag counts its parts


def test_corrupt_object_is_a_miss_and_deleted(s3_bucket):
    import boto3

    endpoint, name = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    with open_adapter(url(s3_bucket, checksum="crc32")) as a:
        run(a, [1], 4096)
        body = bytearray(client.get_object(Bucket=name, Key=a.object_key("k1"))["Body"].read())
        body[-1] ^= 0xFF
        client.put_object(Bucket=name, Key=a.object_key("k1"), Body=bytes(body))
        buf = np.zeros(4096, np.uint8)
        r = a.load([LoadRequest("k1", lambda h: buf)])[0]
        assert r.status is Status.CORRUPT and r.reason == "bad_checksum" and not buf.any()
        assert a.lookup(["k1"]) == [False]


def test_missing_bucket_fails_stores_and_endpoint_down_is_unavailable(s3_bucket):
    endpoint, _ = s3_bucket
    with open_adapter(f"s3://no-such-bucket/x?endpoint_url={endpoint}&region=us-east-1") as a:
        stored, loaded, _ = run(a, [1], 1000)
        assert stored[0].status is Status.FAILED and a.available
        assert a.metrics.snapshot()["store_failed"] == 1
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with open_adapter(f"s3://b/x?endpoint_url={dead}&region=us-east-1&connect_timeout=0.5&retry_min=5") as a:
        stored, loaded, _ = run(a, [1], 1000)
        assert stored[0].status is Status.UNAVAILABLE and loaded[0].status is Status.UNAVAILABLE
        assert not a.available and a.metrics.snapshot()["unavailable_events"] == 1


@pytest.mark.parametrize(
    ("endpoint", "match"),
    [
        ("127.0.0.1:9000", "endpoint_url: expected http"),
        ("ftp://127.0.0.1:9000", "endpoint_url: expected http"),
        ("http://", "endpoint_url: expected http"),
        ("http://127.0.0.1:99999", "endpoint_url port: expected an integer in 1..65535, given '99999'"),
        ("http://127.0.0.1:abc", "endpoint_url port: expected an integer in 1..65535, given 'abc'"),
    ],
)
def test_bad_endpoint_url_names_the_setting(endpoint, match, aws_env):
    with pytest.raises(ValueError, match=match):
        open_adapter(f"s3://b/x?endpoint_url={endpoint}&region=us-east-1")


def test_newer_object_is_a_miss_and_stays(s3_bucket):
    import struct
    import zlib

    import boto3

    endpoint, name = s3_bucket
    client = boto3.client("s3", endpoint_url=endpoint)
    with open_adapter(url(s3_bucket)) as a:
        run(a, [1], 4096)
        body = bytearray(client.get_object(Bucket=name, Key=a.object_key("k1"))["Body"].read())
        struct.pack_into("<H", body, 4, 3)  # a newer writer's version, with a valid header crc
        used = 40 + 8 + 2 + 3 + 5
        struct.pack_into("<I", body, 36, 0)
        struct.pack_into("<I", body, 36, zlib.crc32(bytes(body[:used])))
        client.put_object(Bucket=name, Key=a.object_key("k1"), Body=bytes(body))
        buf = np.zeros(4096, np.uint8)
        r = a.load([LoadRequest("k1", lambda h: buf)])[0]
        assert (r.status, r.reason) == (Status.UNVERIFIABLE, "newer_version") and not buf.any()
        kept = client.get_object(Bucket=name, Key=a.object_key("k1"))["Body"].read()
        assert kept == bytes(body) and a.lookup(["k1"]) == [False]
