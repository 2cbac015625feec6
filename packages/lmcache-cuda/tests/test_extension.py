"""``lmcache_cuda._C`` without a GPU: the build, native checks, pointer table, plan, host memory, wrapper, plugin, CLI.

Needs the built extension and its runtime library (CUDA), not a GPU: everything here is checked
before a runtime call, or asserts how the runtime fails when there is no device. The shared bodies
are :class:`lmcache_gpu.testing.ExtensionTests`; how CUDA stores device code (a fatbin) is checked
here.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from lmcache_gpu.testing import ExtensionTests


def fatbin_entries(so: Path) -> set[tuple[str, int]]:
    """(kind, arch) of each CUDA fatbin entry in the ``.nv_fatbin`` section: ("elf", 80), ("ptx", 90).

    Fatbin layout (as nvcc 11-13 write it): a 16-byte header (magic 0xBA55ED50, version, header
    size, payload size), then entries, each with its kind (1 PTX, 2 ELF) at offset 0, its header
    size at 4, its payload size at 8 and its sm number at 28.
    """
    data = so.read_bytes()
    header = subprocess.run(
        ["readelf", "-S", "-W", str(so)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"\.nv_fatbin\s+\w+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)", header)
    assert match, "no .nv_fatbin section: no device code"
    start, size = int(match.group(1), 16), int(match.group(2), 16)
    blob, pos, found = data[start : start + size], 0, set()
    while pos + 16 <= len(blob):
        magic, _, header_size, payload = struct.unpack_from("<IHHQ", blob, pos)
        if magic != 0xBA55ED50:
            break
        entry, end = pos + header_size, pos + header_size + payload
        while entry < end:
            kind, _, entry_header, entry_payload = struct.unpack_from("<HHIQ", blob, entry)
            (arch,) = struct.unpack_from("<I", blob, entry + 28)
            found.add(({1: "ptx", 2: "elf"}.get(kind, str(kind)), arch))
            entry += entry_header + entry_payload
        pos = end
    return found


class TestCudaExtension(ExtensionTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
    runtime_library = "libcudart.so"

    def test_device_code_is_in_the_binary(self) -> None:
        """Every sm_NN of the build as an ELF entry and every compute_NN as PTX, nothing else."""
        if shutil.which("readelf") is None:
            pytest.skip("readelf not found")
        archs = self.module("_build_info").ARCHS
        want = {("ptx" if a.startswith("compute_") else "elf", int(re.sub(r"\D", "", a))) for a in archs}
        assert fatbin_entries(self.so_path()) == want
