"""What the host is: CPU model, cores, memory and last-level cache, read from the OS.

Linux sources first (``/proc/cpuinfo``, ``/proc/meminfo``, ``/sys/devices/system/cpu/cpu0/cache``),
then ``lscpu`` and ``os.sysconf``; anything not found is reported as unknown (``None``), never
guessed. Imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_CACHE_DIR = Path("/sys/devices/system/cpu/cpu0/cache")
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


@dataclass(frozen=True)
class CacheInfo:
    """The largest data (or unified) CPU cache seen by cpu0: level, bytes per instance, source."""

    level: int
    size_bytes: int
    source: str


@dataclass(frozen=True)
class HostInfo:
    """The machine a command runs on. Sizes in bytes; ``None`` when the OS does not say."""

    cpu_model: str
    machine: str
    system: str
    logical_cpus: int | None
    usable_cpus: int | None
    mem_total_bytes: int | None
    mem_available_bytes: int | None
    llc: CacheInfo | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One line, e.g. ``Intel(R) Xeon(R) (x86_64), 2 cpus, 23.5 GiB memory, LLC L3 480 MiB``."""
        parts = [f"{self.cpu_model} ({self.machine}, {self.system})"]
        if self.usable_cpus is not None:
            parts.append(f"{self.usable_cpus} usable of {self.logical_cpus} cpus")
        if self.mem_total_bytes is not None:
            avail = (
                f" ({self.mem_available_bytes / 2**30:.1f} GiB available)"
                if self.mem_available_bytes is not None
                else ""
            )
            parts.append(f"{self.mem_total_bytes / 2**30:.1f} GiB memory{avail}")
        parts.append(
            f"LLC L{self.llc.level} {self.llc.size_bytes / 2**20:.0f} MiB" if self.llc else "LLC unknown"
        )
        return ", ".join(parts)


def parse_size(text: str) -> int:
    """``"491520K"``, ``"32 MiB"``, ``"2048"`` -> bytes. ValueError for anything else."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:i?B)?\s*", text, flags=re.IGNORECASE)
    if m is None:
        raise ValueError(f"size: expected a number with an optional K/M/G unit, given {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _llc_from_sysfs(cache_dir: Path = _CACHE_DIR) -> CacheInfo | None:
    best: CacheInfo | None = None
    for index in sorted(cache_dir.glob("index*")):
        level, kind, size = (_read(index / name) for name in ("level", "type", "size"))
        if level is None or size is None or kind not in ("Data", "Unified"):
            continue
        try:
            info = CacheInfo(int(level), parse_size(size), str(index))
        except ValueError:
            continue
        if best is None or (info.level, info.size_bytes) > (best.level, best.size_bytes):
            best = info
    return best


def _llc_from_lscpu() -> CacheInfo | None:
    if shutil.which("lscpu") is None:
        return None
    try:
        text = subprocess.run(["lscpu", "-B"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    best: CacheInfo | None = None
    for m in re.finditer(r"^L(\d)[d]? cache:\s*(\d+)", text, flags=re.MULTILINE):
        level, size = int(m.group(1)), int(m.group(2))
        instances = re.search(rf"^L{level}[d]? cache:.*\((\d+) instances?\)", text, flags=re.MULTILINE)
        per_instance = size // int(instances.group(1)) if instances else size
        if best is None or level > best.level:
            best = CacheInfo(level, per_instance, "lscpu")
    return best


def _llc_from_sysconf() -> CacheInfo | None:
    for level in (3, 2):
        try:
            size = os.sysconf(f"SC_LEVEL{level}_CACHE_SIZE")
        except (ValueError, OSError):
            continue
        if size > 0:
            return CacheInfo(level, size, "sysconf")
    return None


def last_level_cache() -> CacheInfo | None:
    """Largest data/unified cache visible to cpu0 (bytes of one instance), or None if unknown."""
    return _llc_from_sysfs() or _llc_from_lscpu() or _llc_from_sysconf()


def _cpu_model() -> str:
    text = _read(Path("/proc/cpuinfo")) or ""
    for key in ("model name", "Model", "Hardware", "cpu model"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, flags=re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine() or "unknown"


def _meminfo() -> dict[str, int]:
    out: dict[str, int] = {}
    for line in (_read(Path("/proc/meminfo")) or "").splitlines():
        m = re.fullmatch(r"(\w+):\s*(\d+)\s*kB", line.strip())
        if m:
            out[m.group(1)] = int(m.group(2)) * 1024
    return out


def host_info() -> HostInfo:
    """Describe this machine."""
    mem = _meminfo()
    try:
        usable: int | None = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return HostInfo(
        cpu_model=_cpu_model(),
        machine=platform.machine(),
        system=platform.system(),
        logical_cpus=os.cpu_count(),
        usable_cpus=usable,
        mem_total_bytes=mem.get("MemTotal"),
        mem_available_bytes=mem.get("MemAvailable"),
        llc=last_level_cache(),
    )
