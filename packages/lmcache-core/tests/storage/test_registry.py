import pytest

from lmcache_core.config import CacheEngineConfig
from lmcache_core.storage import open_adapter
from lmcache_core.storage.registry import BUILTIN, GROUP, adapter_targets
from lmcache_core.storage.url import L2URL, split_urls


def test_entry_points_name_every_builtin_scheme():
    from importlib.metadata import entry_points

    names = {ep.name for ep in entry_points(group=GROUP)}
    assert set(BUILTIN) <= names, "reinstall lmcache-core (pip install -e packages/lmcache-core)"
    assert set(BUILTIN) <= set(adapter_targets())


def test_url_parsing_and_redaction():
    u = L2URL("redis://:s3cret@127.0.0.1:6380/2?prefix=x:&ttl=60")
    assert (u.scheme, u.hostname, u.port, u.path) == ("redis", "127.0.0.1", 6380, "/2")
    assert "s3cret" not in u.redacted and "***" in u.redacted
    assert u.int_param("ttl", 0) == 60 and u.text_param("prefix", "") == "x:"
    assert u.bytes_param("budget", 0, allow_zero=True) == 0
    assert L2URL("fs:///x?budget=2G").bytes_param("budget", 0) == 2 << 30


def test_bad_urls(tmp_path):
    with pytest.raises(ValueError, match=r"unknown L2 scheme 'ftp'; known: .*fs.*redis.*s3"):
        open_adapter("ftp://host/x")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) bogus; valid for fs: .*budget"):
        open_adapter(f"fs://{tmp_path}?bogus=1")
    with pytest.raises(ValueError, match="expected fs:///absolute/path"):
        open_adapter("fs://relative/path")
    with pytest.raises(ValueError, match="parameter in_flight: expected an integer"):
        open_adapter(f"fs://{tmp_path}?in_flight=many")
    with pytest.raises(ValueError, match="given twice"):
        L2URL("fs:///x?a=1&a=2")
    with pytest.raises(ValueError, match="url: expected an L2 URL"):
        L2URL("/just/a/path")


def test_config_reads_l2_urls_from_env():
    c = CacheEngineConfig.from_env(
        {"LMCACHE_L2_URLS": "fs:///a, redis://h:1/0", "LMCACHE_L2_QUEUE_BYTES": "64M"}
    )
    assert c.l2_urls == ("fs:///a", "redis://h:1/0") and c.l2_queue_bytes == 64 << 20
    assert split_urls(["s3://b/p"]) == ("s3://b/p",)
    with pytest.raises(ValueError, match="l2_urls: expected URLs"):
        CacheEngineConfig(l2_urls=("nope",))
    with pytest.raises(ValueError, match="LMCACHE_L2_BATCH"):
        CacheEngineConfig.from_env({"LMCACHE_L2_BATCH": "x"})
