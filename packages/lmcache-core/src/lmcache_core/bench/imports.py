"""How long ``import lmcache_core`` (or another module) takes, in fresh interpreters.

An import is cached per process, so each run is a new interpreter (``sys.executable -c``, with
no ``LMCACHE_*`` variable set) that times ``import <module>`` with ``time.perf_counter`` and
lists the modules it loaded. Figures are the median, min and max over ``runs`` of the import
alone (interpreter start-up excluded), in milliseconds. Beside them: the heavy modules the
import pulled in (torch, pluggy, numpy, a vendor plugin); the test suite checks that this list
is empty (``tests/test_import_cost.py``), this bench measures the time.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

_PROBE = (
    "import json, sys, time\n"
    "t0 = time.perf_counter()\n"
    "import {module}\n"
    "elapsed = time.perf_counter() - t0\n"
    "print(json.dumps({{'seconds': elapsed, 'modules': sorted(sys.modules)}}))\n"
)

#: Top-level packages an ``import lmcache_core`` must not load (see the module docstring).
HEAVY_TOPS = ("torch", "pluggy", "numpy")
#: Core modules that import torch or pluggy themselves.
HEAVY_CORE = ("lmcache_core.backends.reference", "lmcache_core.hookspecs", "lmcache_core.backend")


def heavy_modules(modules: list[str]) -> list[str]:
    """The heavy packages in ``modules`` (top-level names: :data:`HEAVY_TOPS`, plugin packages) and
    the :data:`HEAVY_CORE` modules among them, sorted."""
    out = set()
    for name in modules:
        top = name.split(".")[0]
        if top in HEAVY_TOPS or (top.startswith("lmcache_") and top != "lmcache_core"):
            out.add(top)
        elif name in HEAVY_CORE:
            out.add(name)
    return sorted(out)


def time_import(module: str) -> tuple[float, list[str]]:
    """(seconds, loaded module names) of ``import module`` in one fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE.format(module=module)],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ValueError(f"module: the import of {module!r} failed: {proc.stderr.strip()[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), list(result["modules"])


def measure(module: str, runs: int) -> dict[str, Any]:
    """Median/min/max milliseconds of ``import module`` over ``runs`` fresh interpreters."""
    times, heavy = [], set()
    for _ in range(runs):
        seconds, modules = time_import(module)
        times.append(seconds * 1e3)
        heavy.update(heavy_modules(modules))
    return {
        "module": module,
        "runs": runs,
        "ms": {"median": statistics.median(times), "min": min(times), "max": max(times)},
        "heavy_modules": sorted(heavy),
    }
