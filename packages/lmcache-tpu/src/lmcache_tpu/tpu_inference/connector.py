"""``TPUOffloadConnector`` with lmcache-core's L1/L2 as its host store (tpu-inference 0.32.0).

tpu-inference's platform accepts ``kv_connector`` by name only (``TPUConnector``,
``TPUConnectorHMA``, ``TPUOffloadConnector``, ``RaidenOffloadConnector``), and vLLM's factory
imports ``kv_connector_module_path`` before its own registry. So this class carries the name
``TPUOffloadConnector``, subclasses tpu-inference's class of that name, and is configured as::

    --kv-transfer-config '{"kv_connector": "TPUOffloadConnector", "kv_role": "kv_both",
      "kv_connector_module_path": "lmcache_tpu.tpu_inference.connector",
      "kv_connector_extra_config": {"lmcache.l2_urls": ["fs:///mnt/shared/kv"],
                                    "lmcache.l1_bytes": 17179869184,
                                    "lmcache.model_id": "llama-3.1-8b"}}'

What it changes, and nothing else:

* worker: its ``cpu_backend`` is :class:`~lmcache_tpu.tpu_inference.host_backend.LMCacheCPUBackend`
  (layout set at ``register_runner``); each step's save and load slots are bound to their token
  prefixes before the worker runs them (``start_load_kv``, ``wait_for_save``); a page missing
  from L1 and L2 loads as zeros and its blocks are returned by ``get_block_ids_with_load_errors``,
  so vLLM recomputes them.
* scheduler: before tpu-inference's prefix match, blocks lmcache-core finds in L2 past the local
  hits get slots of their own (:func:`~lmcache_tpu.tpu_inference.host_backend.adopt_l2_hits`).

Imports tpu-inference and vLLM (not installable next to this repo's JAX pin: see docs/tpu.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tpu_inference.offload import tpu_offload_connector as base  # type: ignore[import-not-found]
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorRole

from lmcache_core.cache_engine import CacheEngine
from lmcache_core.config import CacheEngineConfig
from lmcache_core.layout_registry import LayoutHints
from lmcache_tpu.tpu_inference.host_backend import (
    LMCacheCPUBackend,
    adopt_l2_hits,
    bind_requests,
    load_error_blocks,
    scheduler_engine,
)

PREFIX = "lmcache."


def engine_config(vllm_config: Any) -> CacheEngineConfig:
    """lmcache-core's settings from ``kv_connector_extra_config`` (keys ``lmcache.<field>``)."""
    extra = dict(vllm_config.kv_transfer_config.kv_connector_extra_config or {})
    fields = {k.removeprefix(PREFIX): v for k, v in extra.items() if k.startswith(PREFIX)}
    if "l2_urls" in fields:
        fields["l2_urls"] = tuple(fields["l2_urls"])
    fields.setdefault("model_id", str(vllm_config.model_config.model).replace("|", "_"))
    return CacheEngineConfig(**fields)


def layout_hints(vllm_config: Any, num_layers: int) -> LayoutHints:
    model = vllm_config.model_config
    return LayoutHints(
        kind="tpu_inference",
        num_kv_heads=model.get_total_num_kv_heads(),
        head_size=model.get_head_size(),
        block_size=vllm_config.cache_config.block_size,
        num_layers=num_layers,
    )


#: vLLM ``cache_dtype`` values -> torch dtype names ("auto": the model's dtype).
FP8_NAMES = {"fp8": "float8_e4m3fn", "fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2"}


def kv_dtype_name(vllm_config: Any) -> str:
    name = str(vllm_config.cache_config.cache_dtype)
    if name == "auto":
        return str(vllm_config.model_config.dtype).removeprefix("torch.")
    return FP8_NAMES.get(name, name)


class _Scheduler(base.TPUOffloadConnectorScheduler):  # type: ignore[misc]
    def __init__(self, vllm_config: Any, engine: CacheEngine) -> None:
        super().__init__(vllm_config)
        self.lmcache = engine

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        hashes = self._get_request_block_hashes(request)
        if hashes:
            tokens = np.asarray(request.all_token_ids[: len(hashes) * self.block_size], dtype=np.int64)
            cached = self.lmcache.lookup(tokens).tokens // self.block_size
            adopt_l2_hits(self.offload_manager, hashes, cached)
        return super().get_num_new_matched_tokens(request, num_computed_tokens)


class TPUOffloadConnector(base.TPUOffloadConnector):  # type: ignore[misc]
    """tpu-inference's offload connector, its host chunks in lmcache-core's L1 and L2."""

    def __init__(self, vllm_config: Any, role: Any, kv_cache_config: Any = None) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        self._lmcache_config = engine_config(vllm_config)
        if role == KVConnectorRole.SCHEDULER:
            hints = layout_hints(
                vllm_config, vllm_config.model_config.get_num_layers(vllm_config.parallel_config)
            )
            dtype = kv_dtype_name(vllm_config)
            engine = scheduler_engine(self._lmcache_config, hints, dtype)
            self.connector_scheduler = _Scheduler(vllm_config, engine)
        else:
            worker = self.connector_worker
            backend = LMCacheCPUBackend(worker.num_cpu_chunks, config=self._lmcache_config)
            backend.fill_misses = True
            worker.cpu_backend = backend
            self._load_errors: set[int] = set()

    def register_runner(self, runner: Any) -> None:
        super().register_runner(runner)
        kv = runner.kv_caches
        self.connector_worker.cpu_backend.set_layout(
            layout_hints(self._vllm_config, len(kv)), tuple(kv[0].shape[1:]), np.dtype(kv[0].dtype)
        )

    def _bind_step(self) -> list[Any]:
        metadata = self._get_connector_metadata()
        metas = list(getattr(metadata, "requests_meta", []) or [])
        bind_requests(self.connector_worker.cpu_backend, metas, self.connector_worker.block_size)
        return metas

    def start_load_kv(self, fwd_ctx: Any, **kwargs: Any) -> None:
        metas = self._bind_step()
        backend = self.connector_worker.cpu_backend
        backend.load_errors.clear()
        super().start_load_kv(fwd_ctx, **kwargs)
        self._load_errors |= load_error_blocks(metas, backend.load_errors)

    def wait_for_save(self) -> None:
        self._bind_step()
        super().wait_for_save()

    def get_block_ids_with_load_errors(self) -> set[int]:
        out: set[int] = getattr(self, "_load_errors", set())
        self._load_errors = set()
        return out
