"""``import lmcache_core`` stays cheap: it loads no torch, no pluggy and no plugin.

Checked in fresh interpreters (an import is cached per process). How long it takes is measured,
not asserted: ``lmcache-core bench import``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE = r"""
import json, sys
import lmcache_core
print(json.dumps(sorted(sys.modules)))
"""

_LIGHT_NAMES = r"""
import json, sys
import lmcache_core
lmcache_core.KVLayout, lmcache_core.ChunkFormat, lmcache_core.BackendProbe, lmcache_core.API_VERSION
print(json.dumps(sorted(sys.modules)))
"""


def _fresh(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, check=True
    )
    return proc.stdout.strip().splitlines()[-1]


def _heavy(modules: list[str]) -> list[str]:
    """torch, pluggy, plugin packages (lmcache_* other than the core) and the reference kernels."""
    out = []
    for name in modules:
        top = name.split(".")[0]
        if (
            top in ("torch", "pluggy", "numpy", "torch_npu", "jax")
            or (top.startswith("lmcache_") and top != "lmcache_core")
            or name in ("lmcache_core.backends.reference", "lmcache_core.hookspecs", "lmcache_core.backend")
        ):
            out.append(name)
    return out


def test_import_loads_no_torch_pluggy_or_plugin() -> None:
    modules = json.loads(_fresh(_PROBE))
    assert "lmcache_core" in modules
    assert _heavy(modules) == []


def test_heavy_names_the_modules_it_must() -> None:
    """The check above can fail: it catches torch, pluggy, a plugin and the torch-using core modules."""
    loaded = ["json", "lmcache_core", "lmcache_core.layout", "torch", "torch.nn", "pluggy", "lmcache_arm._C",
              "lmcache_core.backend", "numpy"]  # fmt: skip
    assert _heavy(loaded) == [
        "torch",
        "torch.nn",
        "pluggy",
        "lmcache_arm._C",
        "lmcache_core.backend",
        "numpy",
    ]


def test_light_public_names_stay_light() -> None:
    modules = json.loads(_fresh(_LIGHT_NAMES))
    assert _heavy(modules) == []
