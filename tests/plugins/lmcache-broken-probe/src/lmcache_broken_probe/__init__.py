"""Test-only lmcache-core backend plugin whose probe always raises (see tests/plugins/README.md)."""
