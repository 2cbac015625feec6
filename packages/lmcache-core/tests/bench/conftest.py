"""The storage tests' real servers (redis-server), shared rather than copied.

``tests/storage/conftest.py`` starts them (127.0.0.1, free port, stopped by pid); it is loaded
here under its own name and its ``redis_server`` fixture offered to the bench tests.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[1] / "storage" / "conftest.py"
_spec = importlib.util.spec_from_file_location("_lmcache_bench_storage_servers", _PATH)
assert _spec is not None and _spec.loader is not None
_servers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_servers)

redis_server = _servers.redis_server
