"""What a GPU extension was compiled for, read from the ``<package>._build_info`` module CMake writes.

``_build_info.py`` sits next to ``_C`` (``lmcache_write_build_info`` in ``lmcache_gpuConfig.cmake``);
reading it loads neither the extension nor the GPU runtime, so probes may call :func:`read`.

May assume: the standard library. Must not: import torch or an extension.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class BuildInfo:
    """What an extension was compiled for.

    ``runtime``: ``"CUDA"`` / ``"HIP"``; ``runtime_version``: e.g. ``"13.0.88"`` / ``"5.2.0"``;
    ``archs``: device-code targets, e.g. ``("sm_80", "sm_90", "compute_90")`` (binaries, then PTX
    JIT-compiled for newer GPUs) or ``("gfx90a",)``.
    """

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


def read(package: str) -> BuildInfo | None:
    """``<package>._build_info`` (written by CMake next to ``_C``), or None when the build has none."""
    try:
        module = importlib.import_module(f"{package}._build_info")
    except ImportError:
        return None
    return BuildInfo(str(module.RUNTIME), str(module.RUNTIME_VERSION), tuple(module.ARCHS))
