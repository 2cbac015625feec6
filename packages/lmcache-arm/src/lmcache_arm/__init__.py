"""lmcache-arm: native host-memory KV kernels for lmcache-core (NEON on Arm, through SIMDe elsewhere).

The backend registers as ``arm`` in the ``lmcache_core.backends`` entry-point group; the core picks
it automatically when the engine's KV lives in host memory (device type ``"cpu"``).

Modules: :mod:`lmcache_arm.probe` (cheap availability check), :mod:`lmcache_arm.plugin` (the
hook implementations), :mod:`lmcache_arm.kernels` (the Python wrapper of the compiled
``lmcache_arm._C``).

Importing this package is cheap: it imports neither torch nor the compiled extension.
"""

from __future__ import annotations

__version__ = "0.1.0"
