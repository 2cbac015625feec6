"""Plugin of the test-only ``dummy_noimport`` backend: its import fails, as when a native library
the plugin links against is missing. The core must log and skip it in automatic selection, and
raise with the reason when it was asked for by name.
"""

raise ImportError("lmcache_dummy_backend.plugin_noimport: simulated missing native library libdummy.so")
