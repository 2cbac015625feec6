"""Cheap answers for the GPU backends' probes: extension built? which torch build? what it was built for?

Each vendor package's ``probe`` module uses these with its own driver scan (a function returning a
:class:`GpuScan`). The GPU backends serve the same torch device type, ``"cuda"`` (ROCm torch
reports HIP devices as ``cuda``); they are told apart by ``torch.version.hip``, never by
``torch.cuda.is_available()``, which is true for both builds.

May assume: the standard library and :mod:`lmcache_core.plugin_api`. Must not, at import time or
when called: import torch (unless it is already imported), load an extension or a GPU runtime,
or raise for an ordinary "not here" answer. Torch's build is read from ``torch/version.py`` as
text (``importlib.util.find_spec("torch")`` locates it without importing torch; the file is
parsed with :mod:`ast`, never executed).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from lmcache_core.plugin_api import BackendProbe, Priority

#: torch device type the GPU backends serve (ROCm torch uses it too).
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


def hidden_by(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` set to an empty or negative device list (no device visible)."""
    for name in names:
        value = os.environ.get(name)
        if value is not None and (value.strip() == "" or value.strip().startswith("-1")):
            return f"{name}={value!r}"
    return None


@dataclass(frozen=True)
class GpuScan:
    """GPUs a driver exposes: ``names`` (model or gfx name per GPU) and, when none, why not.

    What a vendor's driver scan returns (``lmcache_cuda.probe.nvidia_gpus``: ``("NVIDIA H100 80GB
    HBM3",)``; ``lmcache_rocm.probe.amd_gpus``: ``("gfx90a",)``).
    """

    names: tuple[str, ...]
    why_none: str = ""


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
    """A GPU backend's "not here" answer (accelerator priority, device type ``cuda``)."""
    return BackendProbe(False, reason, Priority.ACCELERATOR, DEVICE_TYPES, None)


def available(reason: str, plugin: str) -> BackendProbe:
    """A GPU backend's "available" answer; ``plugin`` is the dotted path of its hook instance."""
    return BackendProbe(True, reason, Priority.ACCELERATOR, DEVICE_TYPES, plugin)
