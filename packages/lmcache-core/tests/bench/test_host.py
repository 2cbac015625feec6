"""Host facts: sizes as the OS writes them, the last-level cache from a sysfs tree, this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_core.bench.host import CacheInfo, HostInfo, _llc_from_sysfs, host_info, parse_size

MIB = 1 << 20


def test_parse_size() -> None:
    assert parse_size("491520K") == 480 * MIB and parse_size("32 MiB") == 32 * MIB and parse_size("64") == 64
    with pytest.raises(ValueError, match="size"):
        parse_size("lots")


def _cache(root: Path, index: int, level: str, kind: str, size: str) -> None:
    d = root / f"index{index}"
    d.mkdir()
    for name, text in (("level", level), ("type", kind), ("size", size)):
        (d / name).write_text(text + "\n")


def test_llc_is_the_largest_data_or_unified_cache_in_sysfs(tmp_path: Path) -> None:
    _cache(tmp_path, 0, "1", "Data", "48K")
    _cache(tmp_path, 1, "1", "Instruction", "32K")
    _cache(tmp_path, 2, "2", "Unified", "2048K")
    _cache(tmp_path, 3, "3", "Unified", "491520K")
    _cache(tmp_path, 4, "4", "Instruction", "999999K")  # not data: ignored
    _cache(tmp_path, 5, "3", "Unified", "unreadable")  # bad size: ignored
    assert _llc_from_sysfs(tmp_path) == CacheInfo(3, 480 * MIB, str(tmp_path / "index3"))
    assert _llc_from_sysfs(tmp_path / "missing") is None


def test_this_host_is_described_without_guessing() -> None:
    host = host_info()
    assert host.cpu_model and host.logical_cpus is not None and host.logical_cpus >= 1
    assert host.usable_cpus is not None and 1 <= host.usable_cpus <= host.logical_cpus
    assert host.to_json()["machine"] == host.machine
    line = HostInfo("cpu X", "x86_64", "Linux", 4, 2, 8 * 2**30, None, None).describe()
    assert line == "cpu X (x86_64, Linux), 2 usable of 4 cpus, 8.0 GiB memory, LLC unknown"
