"""The ``cuda`` probe: its answers (driven through the NVIDIA driver scan and torch's build), its cost, the scan.

Needs nothing but the installed package: runs without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lmcache_cuda.probe import nvidia_gpus
from lmcache_gpu.probing import TorchBuild
from lmcache_gpu.testing import ProbeTests


class TestCudaProbe(ProbeTests):
    package = "lmcache_cuda"
    backend = "cuda"
    runtime = "CUDA"
    driver_scan = "nvidia_gpus"
    served_gpu = "NVIDIA H100 80GB HBM3"
    served_torch = TorchBuild("2.8.0+cu128", "12.8", None, "test")
    other_torch = TorchBuild("2.8.0+rocm6.4", None, "6.4.4", "test")
    other_torch_reason = "is a ROCm build"


def test_nvidia_scan_reads_the_driver_entries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    proc, dev = tmp_path / "gpus", tmp_path / "dev"
    dev.mkdir()
    assert nvidia_gpus(tmp_path / "missing", dev).names == ()
    (dev / "nvidia0").write_text("")
    (dev / "nvidiactl").write_text("")
    assert nvidia_gpus(tmp_path / "missing", dev).names == ("NVIDIA GPU",)
    for bus, model in (
        ("0000:01:00.0", "NVIDIA H100 80GB HBM3"),
        ("0000:02:00.0", "NVIDIA A100-SXM4-80GB"),
    ):
        (proc / bus).mkdir(parents=True)
        (proc / bus / "information").write_text(f"Model: \t\t {model}\nIRQ:   42\n")
    assert nvidia_gpus(proc, dev).names == ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    hidden = nvidia_gpus(proc, dev)
    assert hidden.names == () and "CUDA_VISIBLE_DEVICES" in hidden.why_none
