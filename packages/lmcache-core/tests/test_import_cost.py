"""``import lmcache_core`` stays cheap: no torch, no pluggy, no plugin, and fast.

Measured in fresh interpreters (an import is cached per process). The time bound is generous (the
import itself takes a few milliseconds); the module checks are exact.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

_PROBE = r"""
import json, sys, time
t0 = time.perf_counter()
import lmcache_core
elapsed = time.perf_counter() - t0
names = sorted(sys.modules)
print(json.dumps({"seconds": elapsed, "modules": names}))
"""

_LIGHT_NAMES = r"""
import json, sys
import lmcache_core
lmcache_core.KVLayout, lmcache_core.ChunkFormat, lmcache_core.BackendProbe, lmcache_core.API_VERSION
print(json.dumps(sorted(sys.modules)))
"""

RUNS = 5
BOUND_S = 0.5


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


def test_import_loads_no_torch_pluggy_or_plugin_and_is_fast() -> None:
    times = []
    for _ in range(RUNS):
        result = json.loads(_fresh(_PROBE))
        assert _heavy(result["modules"]) == []
        assert "lmcache_core" in result["modules"]
        times.append(result["seconds"])
    median = statistics.median(times)
    print(
        f"import lmcache_core: median {median * 1e3:.2f} ms over {RUNS} fresh interpreters "
        f"(min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f})"
    )
    assert median < BOUND_S


def test_light_public_names_stay_light() -> None:
    modules = json.loads(_fresh(_LIGHT_NAMES))
    assert _heavy(modules) == []
