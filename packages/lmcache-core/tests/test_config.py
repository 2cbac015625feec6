import pytest

from lmcache_core.config import CacheEngineConfig, parse_bytes


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
