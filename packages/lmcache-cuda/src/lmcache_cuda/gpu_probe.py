"""Cheap answers for the GPU backends' probes: extension built? which torch build? GPU present?

Shared by ``lmcache_cuda.probe`` and ``lmcache_rocm.probe`` (lmcache-rocm carries this file as a
symlink, so there is one copy). The two backends serve the same torch device type, ``"cuda"``
(ROCm torch reports HIP devices as ``cuda``); they are told apart by ``torch.version.hip``, never by
``torch.cuda.is_available()``, which is true for both builds.

May assume: the standard library and :mod:`lmcache_core.plugin_api`. Must not, at import time or
when called: import torch (unless it is already imported), load an extension or a GPU runtime,
or raise for an ordinary "not here" answer. Torch's build is read from ``torch/version.py`` as
text (``importlib.util.find_spec("torch")`` locates it without importing torch; the file is
parsed with :mod:`ast`, never executed). GPUs are found through the kernel drivers' files:
``/proc/driver/nvidia/gpus/*`` (NVIDIA) and ``/sys/class/kfd/kfd/topology/nodes/*/properties``
behind ``/dev/kfd`` (AMD).
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lmcache_core.plugin_api import BackendProbe, Priority

#: torch device type both GPU backends serve (ROCm torch uses it too).
DEVICE_TYPES = ("cuda",)


@dataclass(frozen=True)
class TorchBuild:
    """What torch was built for: e.g. version ``"2.13.0+cpu"``, cuda ``"12.8"``, hip ``"6.3.42131"``.

    ``version`` is None when torch is not installed; ``source`` says where the answer came from.
    """

    version: str | None
    cuda: str | None
    hip: str | None
    source: str

    def describe(self) -> str:
        """``"torch 2.13.0+cpu (CPU only)"``, ``"torch 2.6.0+rocm6.2 (HIP 6.2.41133)"``, ..."""
        if self.version is None:
            return "torch is not installed"
        if self.hip:
            kind = f"HIP {self.hip}"
        elif self.cuda:
            kind = f"CUDA {self.cuda}"
        else:
            kind = "CPU only"
        return f"torch {self.version} ({kind})"


def _literal_assignments(text: str) -> dict[str, object]:
    values: dict[str, object] = {}
    for node in ast.parse(text).body:
        target, value = None, None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign):
            target, value = node.target, node.value
        if isinstance(target, ast.Name) and value is not None:
            try:
                values[target.id] = ast.literal_eval(value)
            except ValueError:
                continue
    return values


def torch_build() -> TorchBuild:
    """torch's version, CUDA and HIP versions, without importing torch if it is not imported yet."""
    loaded = sys.modules.get("torch.version")
    if loaded is not None:
        return TorchBuild(
            str(getattr(loaded, "__version__", None)),
            getattr(loaded, "cuda", None),
            getattr(loaded, "hip", None),
            "torch.version (already imported)",
        )
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return TorchBuild(None, None, None, "importlib.util.find_spec('torch')")
    for location in spec.submodule_search_locations:
        path = Path(location) / "version.py"
        if path.is_file():
            values = _literal_assignments(path.read_text(encoding="utf-8"))
            version = values.get("__version__")
            cuda, hip = values.get("cuda"), values.get("hip")
            return TorchBuild(
                str(version) if version is not None else None,
                str(cuda) if cuda is not None else None,
                str(hip) if hip is not None else None,
                str(path),
            )
    return TorchBuild(None, None, None, "torch/version.py not found")


def _hidden_by(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` set to an empty or negative device list (no device visible)."""
    for name in names:
        value = os.environ.get(name)
        if value is not None and (value.strip() == "" or value.strip().startswith("-1")):
            return f"{name}={value!r}"
    return None


@dataclass(frozen=True)
class GpuScan:
    """GPUs a driver exposes: ``names`` (model or gfx name per GPU) and, when none, why not."""

    names: tuple[str, ...]
    why_none: str = ""


def nvidia_gpus(proc: Path = Path("/proc/driver/nvidia/gpus"), dev: Path = Path("/dev")) -> GpuScan:
    """NVIDIA GPUs from the driver's /proc entries (one directory per GPU; ``Model:`` in ``information``).

    Containers that expose the device nodes but not /proc/driver/nvidia count ``/dev/nvidiaN``.
    """
    hidden = _hidden_by(("CUDA_VISIBLE_DEVICES",))
    if hidden:
        return GpuScan((), f"hidden by {hidden}")
    if not proc.is_dir():
        nodes = sorted(p.name for p in dev.glob("nvidia[0-9]*")) if dev.is_dir() else []
        if nodes:
            return GpuScan(tuple("NVIDIA GPU" for _ in nodes))
        return GpuScan((), f"no NVIDIA driver: {proc} missing")
    names = []
    for gpu in sorted(proc.iterdir()):
        model = "NVIDIA GPU"
        try:
            for line in (gpu / "information").read_text(errors="replace").splitlines():
                if line.startswith("Model:"):
                    model = line.split(":", 1)[1].strip()
        except OSError:
            pass
        names.append(model)
    return GpuScan(tuple(names), "" if names else f"{proc} is empty")


def gfx_name(target_version: int) -> str:
    """``gfx_target_version`` of the KFD topology -> gfx name: 90010 -> ``"gfx90a"``, 90402 -> ``"gfx942"``."""
    major, minor, stepping = target_version // 10000, (target_version // 100) % 100, target_version % 100
    return f"gfx{major}{minor}{stepping:x}"


def amd_gpus(
    kfd: Path = Path("/dev/kfd"), topology: Path = Path("/sys/class/kfd/kfd/topology/nodes")
) -> GpuScan:
    """AMD GPUs from the KFD topology: nodes with SIMDs, named by ``gfx_target_version``."""
    hidden = _hidden_by(("HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"))
    if hidden:
        return GpuScan((), f"hidden by {hidden}")
    if not kfd.exists():
        return GpuScan((), f"no ROCm kernel driver: {kfd} missing")
    names = []
    nodes = sorted(topology.iterdir()) if topology.is_dir() else []
    for node in nodes:
        try:
            props = dict(
                line.split(None, 1) for line in (node / "properties").read_text().splitlines() if " " in line
            )
        except OSError:
            continue
        if int(props.get("simd_count", "0")) > 0:
            names.append(gfx_name(int(props.get("gfx_target_version", "0"))))
    return GpuScan(tuple(names), "" if names else f"no GPU node in {topology}")


@dataclass(frozen=True)
class BuildInfo:
    """What an extension was compiled for, from its generated ``_build_info`` module."""

    runtime: str
    runtime_version: str
    archs: tuple[str, ...]

    def describe(self) -> str:
        """``"sm_80, sm_90 + PTX compute_90 (CUDA 13.0.88)"`` / ``"gfx90a (HIP 5.2.0)"``."""
        binaries = [a for a in self.archs if not a.startswith("compute_")]
        ptx = [a for a in self.archs if a.startswith("compute_")]
        text = ", ".join(binaries) or "no binary arch"
        if ptx:
            text += " + PTX " + ", ".join(ptx)
        return f"{text} ({self.runtime} {self.runtime_version})"


def build_info(package: str) -> BuildInfo | None:
    """``<package>._build_info`` (written by CMake next to ``_C``), or None when the build has none."""
    try:
        module = importlib.import_module(f"{package}._build_info")
    except ImportError:
        return None
    return BuildInfo(str(module.RUNTIME), str(module.RUNTIME_VERSION), tuple(module.ARCHS))


def not_built(package: str, backend: str, make_dir: str) -> BackendProbe | None:
    """The 'extension is not built' answer, or None when ``<package>._C`` can be found."""
    try:
        if importlib.util.find_spec(f"{package}._C") is not None:
            return None
    except ModuleNotFoundError:  # the package itself is missing
        pass
    return BackendProbe(
        available=False,
        reason=(
            f"compiled extension {package}._C is not installed; build it with `make -C {make_dir} install`"
        ),
        priority=Priority.ACCELERATOR,
        device_types=DEVICE_TYPES,
        plugin=None,
    )


def unavailable(reason: str) -> BackendProbe:
    return BackendProbe(False, reason, Priority.ACCELERATOR, DEVICE_TYPES, None)


def available(reason: str, plugin: str) -> BackendProbe:
    return BackendProbe(True, reason, Priority.ACCELERATOR, DEVICE_TYPES, plugin)
