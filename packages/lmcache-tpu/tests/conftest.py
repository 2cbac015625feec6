"""lmcache-tpu tests run on JAX's CPU backend with four host devices (the mesh tests), set here
before anything imports JAX; on a TPU VM the same tests run on the TPU's devices."""

from __future__ import annotations

import os

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    ).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

pytest_plugins = ["lmcache_core.testing"]
