"""Settings of the vLLM connector: ``kv_connector_extra_config`` first, then ``LMCACHE_*``.

Every :class:`~lmcache_core.config.CacheEngineConfig` field (``chunk_size``, ``l1_bytes``,
``l2_urls``, ``cache_salt``, ``l2_queue_bytes``, ...) can be given in the extra config under its
own name, or in the environment as ``LMCACHE_<NAME>``; the extra config wins. The connector's own
keys (also ``LMCACHE_<NAME>``):

==========================  =========  ===========================================================
key                         default    meaning
==========================  =========  ===========================================================
``load_policy``             ``cost``   ``cost``: load only the prefix that beats recomputing it;
                                       ``always``: load every hit
``prefill_tokens_per_s``    20000      prior of the engine's prefill speed (measured online)
``l1_gbps``                 4.0        prior of L1 -> engine bandwidth, 1e9 bytes/s (measured)
``l2_gbps``                 0.5        prior of L2 -> engine bandwidth, 1e9 bytes/s (measured)
``chunk_overhead_s``        5e-5       fixed cost per loaded chunk, seconds
``lookup_timeout_s``        10.0       how long the scheduler waits for a worker's lookup answer
``server``                  (none)     ``ipc:///path`` or ``tcp://127.0.0.1:PORT``: use the cache
                                       server (``lmcache-core serve``) instead of a cache in each
                                       worker
``server_timeout_s``        5.0        seconds to wait for the server's reply before recomputing
``server_shm_dir``          /dev/shm   where the server's shared-memory segments are
``load_async``              ``l2``     ``l2``: a load with chunks from L2 runs off the step (vLLM
                                       keeps stepping other requests meanwhile); ``always``: every
                                       load; ``never``: every load before the forward (synchronous)
``store_generated``         true       at a request's end, store the chunks its generated tokens
                                       completed (a chat's next turn hits on the reply too)
``store_overlap``           ``auto``   KV on the CPU: ``auto`` runs each step's stores on a thread
                                       pinned to the CPUs the engine thread's binding leaves
                                       (vLLM CPU's reserved ones), so sampling does not wait for
                                       the gather; ``on``: a store thread even with none spare;
                                       ``off``: stores in the step
``load_failure_policy``     recompute  ``recompute``: set vLLM's ``kv_load_failure_policy`` to
                                       ``recompute`` so blocks that fail to load are recomputed;
                                       ``vllm``: leave vLLM's setting (its default fails the
                                       request)
==========================  =========  ===========================================================

``model_id`` defaults to vLLM's model name; ``world_size`` / ``rank`` are set from the worker's
tensor- and pipeline-parallel position and cannot be configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm.store_thread import check_store_overlap
from lmcache_core.units import parse_bytes

_ENGINE_FIELDS = {f.name: f for f in fields(CacheEngineConfig)}
_FIXED = ("world_size", "rank")


@dataclass(frozen=True)
class ConnectorSettings:
    """The connector's own settings (see the module docstring), plus the cache engine's."""

    engine: dict[str, Any]
    load_policy: str = "cost"
    prefill_tokens_per_s: float = 20_000.0
    l1_gbps: float = 4.0
    l2_gbps: float = 0.5
    chunk_overhead_s: float = 5e-5
    lookup_timeout_s: float = 10.0
    load_failure_policy: str = "recompute"
    server: str | None = None
    server_timeout_s: float = 5.0
    server_shm_dir: str = "/dev/shm"
    load_async: str = "l2"
    store_generated: bool = True
    store_overlap: str = "auto"

    def __post_init__(self) -> None:
        check_store_overlap(self.store_overlap)
        if self.load_async not in ("l2", "always", "never"):
            raise ValueError(
                f"load_async: expected one of ['always', 'l2', 'never'], given {self.load_async!r}"
            )
        if not isinstance(self.store_generated, bool):
            raise TypeError(f"store_generated: expected a bool, given {self.store_generated!r}")
        if self.server is not None and not (
            isinstance(self.server, str) and self.server.startswith(("ipc://", "tcp://"))
        ):
            raise ValueError(f"server: expected ipc:///path or tcp://host:port, given {self.server!r}")
        if self.load_policy not in ("cost", "always"):
            raise ValueError(f"load_policy: expected one of ['always', 'cost'], given {self.load_policy!r}")
        if self.load_failure_policy not in ("recompute", "vllm"):
            raise ValueError(
                f"load_failure_policy: expected one of ['recompute', 'vllm'], given {self.load_failure_policy!r}"
            )
        for name in ("prefill_tokens_per_s", "l1_gbps", "l2_gbps", "lookup_timeout_s", "server_timeout_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name}: expected a positive number, given {v!r}")
        if not isinstance(self.chunk_overhead_s, (int, float)) or self.chunk_overhead_s < 0:
            raise ValueError(f"chunk_overhead_s: expected a number >= 0, given {self.chunk_overhead_s!r}")

    @property
    def chunk_size(self) -> int:
        return int(self.engine.get("chunk_size", _ENGINE_FIELDS["chunk_size"].default))

    def engine_config(self, **fixed: Any) -> CacheEngineConfig:
        """The :class:`CacheEngineConfig`, with ``fixed`` (model_id, world_size, rank) applied
        where the settings leave them unset (``model_id``) or always (``world_size``, ``rank``)."""
        values = dict(self.engine)
        for k, v in fixed.items():
            if k in _FIXED or k not in values:
                values[k] = v
        return CacheEngineConfig(**values)


_OWN = {f.name: f for f in fields(ConnectorSettings) if f.name != "engine"}
_FLOATS = (
    "prefill_tokens_per_s",
    "l1_gbps",
    "l2_gbps",
    "chunk_overhead_s",
    "lookup_timeout_s",
    "server_timeout_s",
)
_INTS = ("chunk_size", "l2_queue_items", "l2_batch", "l2_workers")
_BOOLS = ("save_partial_chunks", "pinned", "l2_prefetch", "store_generated")
_BYTES = ("l1_bytes", "l2_queue_bytes")


def _convert(name: str, value: Any, where: str) -> Any:
    """Turn a setting given as text (environment) or JSON value into its type."""
    label = f"{where}[{name!r}]" if where != "env" else f"LMCACHE_{name.upper()}"
    if name in _BYTES:
        if isinstance(value, bool):
            raise TypeError(f"{label}: expected a byte size (int or text like 4G), given {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return 0 if value.strip() == "0" else parse_bytes(label, value)
        raise TypeError(f"{label}: expected a byte size (int or text like 4G), given {value!r}")
    if name in _INTS:
        if isinstance(value, bool):
            raise TypeError(f"{label}: expected an integer, given {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label}: expected an integer, given {value!r}") from None
    if name in _FLOATS or name == "l2_flush_seconds":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{label}: expected a number, given {value!r}") from None
    if name in _BOOLS:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text not in ("0", "1", "true", "false", "yes", "no"):
            raise ValueError(f"{label}: expected one of 0/1/true/false/yes/no, given {value!r}")
        return text in ("1", "true", "yes")
    if name == "l2_urls":
        if isinstance(value, str):
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(u, str) for u in value):
            return tuple(value)
        raise TypeError(f"{label}: expected a list of URLs or one comma-separated string, given {value!r}")
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{label}: expected text, given {value!r}")
    return value


def load_settings(
    extra: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> ConnectorSettings:
    """Read the settings from vLLM's ``kv_connector_extra_config`` and the environment."""
    extra = dict(extra or {})
    env = os.environ if environ is None else environ
    valid = sorted(set(_ENGINE_FIELDS) - set(_FIXED) | set(_OWN))
    unknown = sorted(k for k in extra if k not in valid)
    if unknown:
        raise ValueError(f"kv_connector_extra_config: unknown keys {unknown}; valid keys are {valid}")
    engine: dict[str, Any] = {}
    own: dict[str, Any] = {}
    for name in valid:
        if name in extra:
            value = _convert(name, extra[name], "kv_connector_extra_config")
        elif f"LMCACHE_{name.upper()}" in env:
            value = _convert(name, env[f"LMCACHE_{name.upper()}"], "env")
        else:
            continue
        (own if name in _OWN else engine)[name] = value
    return ConnectorSettings(engine=engine, **own)
