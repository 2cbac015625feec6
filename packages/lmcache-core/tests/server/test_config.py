"""Server settings: defaults < TOML < LMCACHE_SERVER_* < flags, and errors naming the setting."""

from __future__ import annotations

import pytest

from lmcache_core.server.config import ServerConfig, default_listen, load_config


def test_precedence(tmp_path) -> None:
    toml = tmp_path / "server.toml"
    toml.write_text(
        '[server]\nlisten = "tcp://127.0.0.1:7000"\nl1_bytes = "2G"\nchunk_size = 64\nl2_urls = ["fs:///a", "fs:///b"]\n'
        'lease_seconds = 9\n[server.salt_quota_bytes]\n"*" = "1G"\n"t" = 1024\n'
    )
    env = {
        "LMCACHE_SERVER_L1_BYTES": "3G",
        "LMCACHE_SERVER_L2_PREFETCH": "no",
        "LMCACHE_SERVER_SALT_QUOTA_BYTES": "tenant-q9=4K,*=2M",
    }
    c = load_config(str(toml), env, chunk_size=128, listen=None)
    assert c.listen == "tcp://127.0.0.1:7000" and c.chunk_size == 128 and c.l1_bytes == 3 * 2**30
    assert c.l2_urls == ("fs:///a", "fs:///b") and c.lease_seconds == 9.0 and c.l2_prefetch is False
    assert c.salt_quota_bytes == {"tenant-q9": 4096, "*": 2 * 2**20}
    assert load_config(str(toml), {}).salt_quota_bytes == {"*": 2**30, "t": 1024}
    described = c.describe()
    assert described["salt_quota_bytes"] == {"salts": 2, "default": 2 * 2**20} and "tenant-q9" not in str(
        described
    )


def test_defaults() -> None:
    c = load_config(None, {})
    assert c.listen == default_listen() and c.listen.startswith("ipc://") and c.http == ""
    assert c.effective_segment_bytes == 2**30 and c.effective_queue_bytes == 2**30


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"listen": "http://x"}, "listen: expected ipc"),
        ({"http": "nohost"}, "http: expected host:port"),
        ({"l1_bytes": 0}, "l1_bytes: expected a positive int"),
        (
            {"lease_seconds": 1.0, "heartbeat_seconds": 2.0},
            "lease_seconds: expected more than heartbeat_seconds",
        ),
        ({"salt_quota_bytes": {"t": -1}}, "salt_quota_bytes\\['t'\\]"),
        ({"drain_seconds": float("nan")}, "drain_seconds"),
    ],
)
def test_bad_values_name_the_setting(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ServerConfig(**kwargs)


def test_bad_sources(tmp_path) -> None:
    with pytest.raises(ValueError, match="LMCACHE_SERVER_CHUNK_SIZE: expected an integer"):
        load_config(None, {"LMCACHE_SERVER_CHUNK_SIZE": "many"})
    bad = tmp_path / "bad.toml"
    bad.write_text("l1_byte = 5\n")
    with pytest.raises(ValueError, match="unknown keys \\['l1_byte'\\]"):
        load_config(str(bad), {})
    bad.write_text("l1_bytes = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(bad), {})
    with pytest.raises(ValueError, match="cannot read"):
        load_config(str(tmp_path / "missing.toml"), {})
