"""Probe of the ``ascend`` backend: torch_npu installed, NPU device nodes, a CANN toolkit.

May assume: nothing beyond the standard library and :mod:`lmcache_core.plugin_api`.
Must not, at import time or when called: import torch, torch_npu or any CANN library, or raise
for an ordinary "not here" answer. It looks torch_npu up with ``importlib.util.find_spec``, lists
``/dev/davinci[0-9]*`` and ``/dev/davinci_manager``, and looks for CANN at ``ASCEND_HOME_PATH``,
else ``/usr/local/Ascend/ascend-toolkit/latest``. Every missing piece is reported by name.

Tests lay out a host under a temporary directory and pass it as ``root`` (device nodes and the
standard CANN path are looked up under it), with ``search_path`` for torch_npu and ``environ``.

The CPU test switch ``LMCACHE_ASCEND_TORCH_OPS_ON_CPU=1`` makes the backend serve KV in host
memory through its torch-ops path (:mod:`lmcache_ascend.host`), for the conformance suite and
``bench kernels`` on hosts without an NPU; unset, the backend never serves ``cpu``, so normal
selection keeps CPU KV on ``arm``.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from lmcache_ascend import UNVERIFIED
from lmcache_core.plugin_api import BackendProbe, Priority

#: Dotted paths of the plugin objects, imported only when this backend is chosen.
PLUGIN = "lmcache_ascend.plugin:PLUGIN"
HOST_PLUGIN = "lmcache_ascend.host:PLUGIN"
#: Environment variable of the CPU test switch (value ``1``).
CPU_SWITCH = "LMCACHE_ASCEND_TORCH_OPS_ON_CPU"
#: Where CANN's toolkit installs by default (``set_env.sh`` exports ASCEND_HOME_PATH to it).
CANN_DEFAULT = "usr/local/Ascend/ascend-toolkit/latest"
TORCH_NPU = "torch_npu"


def _find_torch_npu(search_path: Sequence[str] | None) -> str | None:
    """Where torch_npu would be imported from, without importing it (None: not installed)."""
    try:
        if search_path is None:
            spec = importlib.util.find_spec(TORCH_NPU)
        else:
            spec = importlib.machinery.PathFinder.find_spec(TORCH_NPU, list(search_path))
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    return spec.origin or (str(next(iter(spec.submodule_search_locations or []), "")) or TORCH_NPU)


def _device_nodes(root: Path) -> tuple[list[str], bool]:
    dev = root / "dev"
    try:
        nodes = sorted(p.name for p in dev.iterdir() if p.name.startswith("davinci") and p.name[7:].isdigit())
    except OSError:
        nodes = []
    return nodes, (dev / "davinci_manager").exists()


def _cann(root: Path, environ: Mapping[str, str]) -> tuple[str | None, str]:
    """CANN toolkit directory, or None, and where it was looked for."""
    home = environ.get("ASCEND_HOME_PATH")
    if home:
        return (home if Path(home).is_dir() else None), f"ASCEND_HOME_PATH={home}"
    default = root / CANN_DEFAULT
    return (str(default) if default.is_dir() else None), f"ASCEND_HOME_PATH unset and {default}"


def probe(
    root: str | os.PathLike[str] | None = None,
    search_path: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> BackendProbe:
    """Available when torch_npu, NPU device nodes and a CANN toolkit are all there; serves ``npu``.

    ``root`` (default ``/``), ``search_path`` (default ``sys.path``) and ``environ`` (default
    ``os.environ``) exist for tests.
    """
    env = os.environ if environ is None else environ
    if env.get(CPU_SWITCH) == "1":
        return BackendProbe(
            available=True,
            reason=f"torch-ops path on CPU tensors ({CPU_SWITCH}=1, a test switch); {UNVERIFIED}",
            priority=Priority.ACCELERATOR,
            device_types=("cpu",),
            plugin=HOST_PLUGIN,
        )
    base = Path(root) if root is not None else Path("/")
    missing = []
    torch_npu = _find_torch_npu(search_path)
    if torch_npu is None:
        missing.append(
            f"{TORCH_NPU} (not installed: importlib.util.find_spec found nothing, install the torch_npu that matches CANN and torch)"
        )
    nodes, manager = _device_nodes(base)
    if not nodes:
        missing.append(f"NPU device nodes ({base / 'dev'}/davinci[0-9]* absent: no NPU or driver)")
    if not manager:
        missing.append(f"{base / 'dev' / 'davinci_manager'} (absent: Ascend driver not loaded)")
    cann, looked = _cann(base, env)
    if cann is None:
        missing.append(f"CANN toolkit ({looked} not a directory, source CANN's set_env.sh)")
    if missing:
        return BackendProbe(
            available=False,
            reason=f"missing: {'; '.join(missing)}; {UNVERIFIED}",
            priority=Priority.ACCELERATOR,
            device_types=("npu",),
            plugin=None,
        )
    return BackendProbe(
        available=True,
        reason=f"{len(nodes)} NPU device node(s) ({', '.join(nodes)}), {TORCH_NPU} at {torch_npu}, CANN at {cann}; {UNVERIFIED}",
        priority=Priority.ACCELERATOR,
        device_types=("npu",),
        plugin=PLUGIN,
    )
