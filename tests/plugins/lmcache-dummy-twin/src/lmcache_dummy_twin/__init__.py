"""Test-only lmcache-core backend tied with the dummy backend (see tests/plugins/README.md)."""

#: Environment variable that makes this backend available.
ENABLE_ENV = "LMCACHE_TEST_DUMMY_TWIN"

#: Same priority and device types as ``lmcache_dummy_backend``'s dummy.
PRIORITY = 1000
