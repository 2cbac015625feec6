"""Test-only lmcache-core backend plugin (see tests/plugins/README.md).

Importing this package imports nothing heavy: the probe lives in :mod:`.probe` (no torch), the
kernels in :mod:`.plugin` (torch), loaded by the core only when this backend is selected.
"""

#: Environment variables that make the test backends available (unset: the probe says no).
ENABLE_ENV = "LMCACHE_TEST_DUMMY"
BADAPI_ENV = "LMCACHE_TEST_DUMMY_BADAPI"
NOIMPORT_ENV = "LMCACHE_TEST_DUMMY_NOIMPORT"

#: Priorities above every real backend, so a test's outcome does not depend on what else is
#: installed. ``dummy_noimport`` and ``dummy_badapi`` sit higher still: when enabled they are
#: tried first, fail to load, and automatic selection must log them and fall through.
PRIORITY = 1000
NOIMPORT_PRIORITY = 2000
BADAPI_PRIORITY = 3000
