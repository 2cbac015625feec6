"""Type stub of lmcache_rocm._C: lmcache-gpu's extension interface (its source, compiled here)."""

from lmcache_gpu._extension import *  # noqa: F403  (the one interface, re-exported)
