"""The ``rocm`` probe: its answers (driven through the KFD topology scan and torch's build), its cost, the scan.

Needs nothing but the installed package: runs without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_gpu.probing import TorchBuild
from lmcache_gpu.testing import ProbeTests
from lmcache_rocm.probe import amd_gpus, gfx_name


class TestRocmProbe(ProbeTests):
    package = "lmcache_rocm"
    backend = "rocm"
    runtime = "HIP"
    driver_scan = "amd_gpus"
    served_gpu = "gfx90a"  # the default build's architecture
    served_torch = TorchBuild("2.8.0+rocm6.4", None, "6.4.4", "test")
    other_torch = TorchBuild("2.8.0+cu128", "12.8", None, "test")
    other_torch_reason = "is not a ROCm build"


def test_amd_scan_reads_the_kfd_topology(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    kfd, nodes = tmp_path / "kfd", tmp_path / "nodes"
    assert "missing" in amd_gpus(kfd, nodes).why_none
    kfd.write_text("")
    for i, (simds, target) in enumerate(((0, 0), (440, 90010), (304, 90402))):  # CPU node, MI250X, MI300X
        (nodes / str(i)).mkdir(parents=True)
        (nodes / str(i) / "properties").write_text(
            f"cpu_cores_count 8\nsimd_count {simds}\ngfx_target_version {target}\n"
        )
    assert amd_gpus(kfd, nodes).names == ("gfx90a", "gfx942")
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "-1")
    assert amd_gpus(kfd, nodes).names == ()


@pytest.mark.parametrize(
    ("version", "name"), [(90010, "gfx90a"), (90402, "gfx942"), (90008, "gfx908"), (110000, "gfx1100")]
)
def test_gfx_names(version: int, name: str) -> None:
    assert gfx_name(version) == name
