"""Probe test bodies: a vendor package's probe answers, its cost, and the shared probe helpers.

A vendor's ``test_probe.py`` subclasses :class:`ProbeTests` with its names and its own facts:
``driver_scan`` (the name of the scan function in its ``probe`` module), ``served_gpu`` (a GPU
name that scan returns for a GPU it serves), ``served_torch`` and ``other_torch`` (a torch build
it serves and one it leaves to another backend) and ``other_torch_reason`` (the words its probe
uses for the latter). Its driver-scan tests are its own. Imported only by tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import ClassVar

import pytest
import torch

from lmcache_core.plugin_api import BackendProbe, Priority
from lmcache_gpu import build_info, probing
from lmcache_gpu.probing import GpuScan, TorchBuild
from lmcache_gpu.testing._package import PackageUnderTest


class ProbeTests(PackageUnderTest):
    """The probe's answers for each situation, and what it costs."""

    driver_scan: ClassVar[str] = ""
    served_gpu: ClassVar[str] = ""
    served_torch: ClassVar[TorchBuild] = TorchBuild(None, None, None, "unset")
    other_torch: ClassVar[TorchBuild] = TorchBuild(None, None, None, "unset")
    other_torch_reason: ClassVar[str] = ""

    def probe(self) -> BackendProbe:
        return self.module("probe").probe()  # type: ignore[no-any-return]

    def _gpus(self, monkeypatch: pytest.MonkeyPatch, *names: str, why_none: str = "") -> None:
        monkeypatch.setattr(self.module("probe"), self.driver_scan, lambda: GpuScan(names, why_none))

    def test_answers_with_the_accelerator_priority_and_device_type(self) -> None:
        answer = self.probe()
        assert isinstance(answer, BackendProbe)
        assert answer.priority == Priority.ACCELERATOR
        assert answer.device_types == ("cuda",)
        assert (answer.plugin is not None) == answer.available

    def test_compiled_no_device_when_the_driver_shows_no_gpu(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._gpus(monkeypatch, why_none="test: no GPU")
        answer = self.probe()
        assert not answer.available
        assert answer.reason.startswith("compiled, no device: compiled for "), answer.reason
        info = build_info.read(self.package)
        assert info is not None and all(
            a in answer.reason for a in info.archs if not a.startswith("compute_")
        )
        assert "test: no GPU" in answer.reason

    def test_available_with_a_gpu_and_a_matching_torch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self._gpus(monkeypatch, self.served_gpu)
        monkeypatch.setattr(probing, "torch_build", lambda: self.served_torch)
        answer = self.probe()
        assert answer.available, answer.reason
        assert answer.plugin == f"{self.package}.plugin:plugin"

    def test_tells_the_torch_builds_apart_by_torch_version_hip(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Both builds report device type "cuda"; only torch.version.hip tells them apart."""
        self._gpus(monkeypatch, self.served_gpu)
        monkeypatch.setattr(probing, "torch_build", lambda: self.other_torch)
        answer = self.probe()
        assert not answer.available
        assert self.other_torch_reason in answer.reason, answer.reason
        assert "torch.version.hip" in answer.reason

    def test_not_built_names_the_extension_and_the_remedy(self) -> None:
        answer = probing.not_built(
            "lmcache_no_such_package_for_tests", self.backend, f"packages/lmcache-{self.backend}"
        )
        assert answer is not None and not answer.available
        assert "lmcache_no_such_package_for_tests._C" in answer.reason and "make -C" in answer.reason
        assert probing.not_built(self.package, self.backend, "x") is None  # built here

    def test_probe_does_not_import_torch(self) -> None:
        code = (
            "import sys\n"
            f"from {self.package}.probe import probe\n"
            "answer = probe()\n"
            "print(type(answer).__name__, 'torch' in sys.modules, any(m.endswith('._C') for m in sys.modules))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        kind, torch_loaded, ext_loaded = out.split()
        assert kind == "BackendProbe"
        assert torch_loaded == "False", "the probe imported torch"
        assert ext_loaded == "False", "the probe loaded a compiled extension"

    def test_torch_build_read_as_text_matches_torch_version(self) -> None:
        code = (
            "import sys, json\n"
            "from lmcache_gpu.probing import torch_build\n"
            "b = torch_build()\n"
            "print(json.dumps([b.version, b.cuda, b.hip, 'torch' in sys.modules]))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        version, cuda, hip, imported = json.loads(out)
        assert imported is False
        assert (version, cuda, hip) == (torch.__version__, torch.version.cuda, torch.version.hip)
        loaded = probing.torch_build()  # torch is imported in this process
        assert (loaded.version, loaded.cuda, loaded.hip) == (version, cuda, hip)
