"""Test-only lmcache-core backend for numpy KV arrays, functional (see tests/plugins/README.md).

Importing this package imports nothing heavy: the probe lives in :mod:`.probe`, the kernels
(numpy) in :mod:`.plugin`, loaded by the core only when this backend is selected.
"""

#: Environment variable that makes the backend available (unset: the probe says no).
ENABLE_ENV = "LMCACHE_TEST_NUMPY_FUNCTIONAL"

#: Above every real backend, like the other test backends; it serves numpy arrays only, so it
#: never competes with them for torch KV.
PRIORITY = 1000
