"""Where lmcache-core's C++ headers are, for native backends' builds.

``get_include()`` returns the directory to put on a compiler's include path so that
``#include "lmcache_core/kv_index.h"`` finds the index math every native backend shares (host
C++, CUDA and HIP builds alike) and ``#include "lmcache_core/kv_checks.h"`` the host-only checks
each launcher runs before a transfer (:mod:`lmcache_core.native_args` builds their arguments).
Imports nothing beyond the standard library.
"""

from __future__ import annotations

from pathlib import Path


def get_include() -> str:
    """Absolute path of the directory holding ``lmcache_core/kv_index.h`` and ``kv_checks.h``."""
    return str(Path(__file__).resolve().parent / "include")
