"""Connector settings: kv_connector_extra_config first, then LMCACHE_* variables."""

from __future__ import annotations

import pytest

from lmcache_core.integrations.vllm.settings import load_settings


def test_extra_config_wins_over_environment() -> None:
    env = {"LMCACHE_CHUNK_SIZE": "512", "LMCACHE_L1_BYTES": "1G", "LMCACHE_L2_URLS": "fs:///a, fs:///b"}
    s = load_settings({"chunk_size": 128, "cache_salt": "tenant-a"}, env)
    assert s.chunk_size == 128
    c = s.engine_config(model_id="m", world_size=2, rank=1)
    assert (c.chunk_size, c.l1_bytes, c.l2_urls, c.cache_salt) == (
        128,
        2**30,
        ("fs:///a", "fs:///b"),
        "tenant-a",
    )
    assert (c.model_id, c.world_size, c.rank) == ("m", 2, 1)


def test_types_from_text_and_json() -> None:
    s = load_settings(
        {"l1_bytes": "512M", "l2_urls": ["redis://127.0.0.1:6379/0"], "load_policy": "always", "l1_gbps": 8},
        {"LMCACHE_PINNED": "no", "LMCACHE_L2_GBPS": "0.25", "LMCACHE_MODEL_ID": "llama-3-8b"},
    )
    c = s.engine_config(model_id="ignored: model_id is set", world_size=1, rank=0)
    assert (c.l1_bytes, c.pinned, c.model_id) == (512 * 2**20, False, "llama-3-8b")
    assert (s.load_policy, s.l1_gbps, s.l2_gbps) == ("always", 8.0, 0.25)
    assert load_settings({}, {}).chunk_size == 256  # CacheEngineConfig's default


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ValueError, match=r"unknown keys \['chunksize'\]; valid keys are \[.*'chunk_size'"):
        load_settings({"chunksize": 64}, {})
    with pytest.raises(ValueError, match="rank"):  # set from vLLM, not configurable
        load_settings({"rank": 1}, {})
    with pytest.raises(ValueError, match=r"LMCACHE_CHUNK_SIZE: expected an integer, given 'big'"):
        load_settings({}, {"LMCACHE_CHUNK_SIZE": "big"})
    with pytest.raises(ValueError, match=r"kv_connector_extra_config\['l1_bytes'\]: expected a byte size"):
        load_settings({"l1_bytes": "lots"}, {})
    with pytest.raises(TypeError, match=r"l2_urls'\]: expected a list of URLs"):
        load_settings({"l2_urls": 5}, {})
    with pytest.raises(
        ValueError, match=r"load_policy: expected one of \['always', 'cost'\], given 'sometimes'"
    ):
        load_settings({"load_policy": "sometimes"}, {})
    with pytest.raises(ValueError, match="load_failure_policy"):
        load_settings({}, {"LMCACHE_LOAD_FAILURE_POLICY": "fail"})
    with pytest.raises(ValueError, match="l1_gbps: expected a positive number"):
        load_settings({"l1_gbps": -1}, {})


def test_chunk_size_need_not_hold_whole_blocks() -> None:
    """Issue 12.2: chunks hold token rows, so any positive chunk size is accepted."""
    assert load_settings({"chunk_size": 48}, environ={}).chunk_size == 48
    assert not hasattr(load_settings({}, environ={}), "check_block_size")
