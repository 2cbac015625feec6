"""Byte sizes and durations as text (:mod:`lmcache_core.units`), the leaf both config and L2 URLs use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lmcache_core.units import parse_bytes, parse_seconds


@pytest.mark.parametrize(
    ("text", "value"),
    [("1048576", 2**20), ("512M", 512 * 2**20), ("4G", 4 * 2**30), ("1.5GiB", 3 * 2**29), ("2t", 2 * 2**40)],
)
def test_parse_bytes(text: str, value: int) -> None:
    assert parse_bytes("l1_bytes", text) == value


@pytest.mark.parametrize("text", ["", "G", "12X", "-1", "0", "inf", "nan", "9E"])
def test_parse_bytes_names_the_setting(text: str) -> None:
    with pytest.raises(ValueError, match=r"^LMCACHE_L1_BYTES: expected a"):
        parse_bytes("LMCACHE_L1_BYTES", text)


def test_parse_seconds() -> None:
    assert parse_seconds("t", "2.5") == 2.5 and parse_seconds("t", "0") == 0.0
    for bad in ("-1", "inf", "nan", "soon"):
        with pytest.raises(ValueError, match=r"^t: expected a"):
            parse_seconds("t", bad)


def test_leaf_module_and_no_config_url_cycle() -> None:
    """Issue 11.4: config imports storage.url, which imports units, which imports nothing of ours."""
    code = (
        "import sys, lmcache_core.units as u\n"
        "assert not [m for m in sys.modules if m.startswith('lmcache_core.') and m != 'lmcache_core.units'], "
        "sorted(m for m in sys.modules if m.startswith('lmcache_core'))\n"
        "import lmcache_core.storage.url\n"
        "assert 'lmcache_core.config' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
