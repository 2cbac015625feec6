import pytest

from lmcache_core.config import CacheEngineConfig
from lmcache_core.units import parse_bytes, parse_seconds


def test_parse_bytes():
    assert parse_bytes("x", "4G") == 4 * 2**30
    assert parse_bytes("x", "512MiB") == 512 * 2**20
    assert parse_bytes("x", "1.5k") == 1536
    assert parse_bytes("x", "1048576") == 2**20
    with pytest.raises(ValueError, match=r"LMCACHE_L1_BYTES.*.lots."):
        parse_bytes("LMCACHE_L1_BYTES", "lots")
    with pytest.raises(ValueError, match="positive"):
        parse_bytes("x", "0")


def test_from_env_and_overrides():
    env = {
        "LMCACHE_CHUNK_SIZE": "128",
        "LMCACHE_L1_BYTES": "1G",
        "LMCACHE_CACHE_SALT": "t1",
        "LMCACHE_PINNED": "false",
        "UNRELATED": "1",
    }
    c = CacheEngineConfig.from_env(env, model_id="m")
    assert (c.chunk_size, c.l1_bytes, c.cache_salt, c.pinned, c.model_id) == (128, 2**30, "t1", False, "m")
    assert CacheEngineConfig.from_env(env, chunk_size=64).chunk_size == 64


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"LMCACHE_CHUNK_SIZE": "abc"}, "LMCACHE_CHUNK_SIZE"),
        ({"LMCACHE_PINNED": "maybe"}, "LMCACHE_PINNED"),
        ({"LMCACHE_CHUNK_SIZE": "0"}, "chunk_size"),
        ({"LMCACHE_WORLD_SIZE": "2", "LMCACHE_RANK": "2"}, "rank"),
    ],
)
def test_bad_env(env, name):
    with pytest.raises(ValueError, match=name):
        CacheEngineConfig.from_env(env)


@pytest.mark.parametrize("text", ["inf", "1e400", "nan", "-inf", "infG", "1e19", "1e400K"])
def test_parse_bytes_refuses_non_finite_and_huge_sizes(text):
    with pytest.raises(ValueError, match=rf"LMCACHE_L1_BYTES: expected a finite byte size.*{text!r}"):
        parse_bytes("LMCACHE_L1_BYTES", text)


def test_parse_seconds():
    assert parse_seconds("x", "2.5") == 2.5 and parse_seconds("x", "0") == 0.0
    for text in ("nan", "inf", "1e400", "-1"):
        with pytest.raises(ValueError, match=rf"LMCACHE_L2_FLUSH_SECONDS: expected a finite.*{text!r}"):
            parse_seconds("LMCACHE_L2_FLUSH_SECONDS", text)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"LMCACHE_L2_FLUSH_SECONDS": "nan"}, "LMCACHE_L2_FLUSH_SECONDS: expected a finite"),
        ({"LMCACHE_L2_FLUSH_SECONDS": "inf"}, "LMCACHE_L2_FLUSH_SECONDS: expected a finite"),
        ({"LMCACHE_L1_BYTES": "1e400"}, "LMCACHE_L1_BYTES: expected a finite byte size"),
        ({"LMCACHE_L2_QUEUE_BYTES": "nan"}, "LMCACHE_L2_QUEUE_BYTES: expected a finite byte size"),
    ],
)
def test_non_finite_settings_name_the_setting(env, match):
    with pytest.raises(ValueError, match=match):
        CacheEngineConfig.from_env(env)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0, True])
def test_l2_flush_seconds_argument_must_be_finite(value):
    with pytest.raises(ValueError, match="l2_flush_seconds: expected a finite, non-negative number"):
        CacheEngineConfig(l2_flush_seconds=value)


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("fs:///tmp/x?budget=inf", "parameter budget: expected a finite byte size"),
        ("fs:///tmp/x?budget=1e400", "parameter budget: expected a finite byte size"),
        ("fs:///tmp/x?budget=nan", "parameter budget: expected a finite byte size"),
        ("fs:///tmp/x?rescan_interval=nan", "parameter rescan_interval: expected a finite number"),
        ("fs:///tmp/x?touch_interval=inf", "parameter touch_interval: expected a finite number"),
        ("fs:///tmp/x?timeout=1e400", "parameter timeout: expected a finite number"),
        ("fs:///tmp/x?low_water=nan", "parameter low_water: expected a finite number"),
        ("fs:///tmp/x?mode=rw2", "parameter mode: expected auto, rw or ro"),
    ],
)
def test_l2_url_sizes_and_durations_name_the_setting(url, match, tmp_path):
    from lmcache_core.storage import open_adapter

    with pytest.raises(ValueError, match=match):
        open_adapter(url.replace("/tmp/x", str(tmp_path)))
