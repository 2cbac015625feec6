"""``LMCacheCoreConnector``: lmcache-core as a vLLM v1 KV connector (``KVConnectorBase_V1``).

Select it with::

    kv_transfer_config={
        "kv_connector": "LMCacheCoreConnector",
        "kv_role": "kv_both",
        "kv_connector_module_path": "lmcache_core.integrations.vllm",
        "kv_connector_extra_config": {"chunk_size": 256, "l1_bytes": "8G", "l2_urls": ["fs:///mnt/kv"]},
    }

vLLM makes one instance in the scheduler (role SCHEDULER: :mod:`.scheduler`) and one per worker
(role WORKER: :mod:`.worker`). Written against vLLM 0.32's interface; this module imports vLLM
and is imported only by vLLM's connector factory (through the package's lazy ``__getattr__``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.distributed.kv_transfer.kv_connector.v1.metrics import KVConnectorPromMetrics, KVConnectorStats
from vllm.v1.metrics.cache_hit_source import CacheHitSource

from lmcache_core.integrations.vllm import lookup, stats
from lmcache_core.integrations.vllm.plan import StepPlan
from lmcache_core.integrations.vllm.policy import CostModel
from lmcache_core.integrations.vllm.scheduler import SchedulerSide
from lmcache_core.integrations.vllm.settings import ConnectorSettings, load_settings
from lmcache_core.integrations.vllm.worker import WorkerSide
from lmcache_core.layout import dtype_name
from lmcache_core.layout_registry import LayoutHints
from lmcache_core.vllm_cpu_order import ORDER_KINDS, order_for_isa

if TYPE_CHECKING:
    import torch
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.outputs import KVConnectorOutput
    from vllm.v1.request import Request

logger = logging.getLogger(__name__)

#: Prometheus names: ``vllm:lmcache_core_<counter>`` (prometheus-client appends ``_total``).
METRIC_PREFIX = "vllm:lmcache_core_"
#: Buckets of the per-load time histogram, seconds.
LOAD_TIME_BUCKETS = (1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LMCacheCoreMetadata(KVConnectorMetadata):
    """The scheduler's :class:`~.plan.StepPlan` for one step."""

    def __init__(self, plan: StepPlan) -> None:
        self.plan = plan


@dataclass
class LMCacheCoreStats(KVConnectorStats):
    """One interval's counters (:mod:`.stats`); added over workers and the scheduler."""

    def __post_init__(self) -> None:
        if not self.data:
            self.data = stats.empty()

    def reset(self) -> None:
        self.data = stats.empty()

    def aggregate(self, other: KVConnectorStats) -> KVConnectorStats:
        if not isinstance(other, LMCacheCoreStats):
            raise TypeError(f"other: expected LMCacheCoreStats, given {type(other).__name__}")
        return LMCacheCoreStats(data=stats.add(self.data, other.data))

    def reduce(self) -> dict[str, int | float]:
        return stats.reduce(self.data)

    def is_empty(self) -> bool:
        return stats.is_empty(self.data)


class LMCacheCorePromMetrics(KVConnectorPromMetrics):
    """Counters ``vllm:lmcache_core_<name>_total`` for every counter of :mod:`.stats`, and the
    histogram ``vllm:lmcache_core_load_time_seconds`` of per-request load times."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        metric_types: dict[Any, Any],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> None:
        super().__init__(vllm_config, metric_types, labelnames, per_engine_labelvalues)
        self._counters: dict[tuple[int, str], Any] = {}
        self._load_time: dict[int, Any] = {}
        for name, doc in stats.COUNTERS.items():
            metric = self._counter_cls(name=METRIC_PREFIX + name, documentation=doc, labelnames=labelnames)
            for idx, values in per_engine_labelvalues.items():
                self._counters[(idx, name)] = metric.labels(*values)
        hist_cls: Any = self._histogram_cls
        hist = hist_cls(
            name=METRIC_PREFIX + "load_time_seconds",
            documentation="time to load one request's cached prefix into vLLM's KV, per rank",
            buckets=list(LOAD_TIME_BUCKETS),
            labelnames=labelnames,
        )
        for idx, values in per_engine_labelvalues.items():
            self._load_time[idx] = hist.labels(*values)

    def observe(self, transfer_stats_data: dict[str, Any], engine_idx: int = 0) -> None:
        for name in stats.COUNTERS:
            value = transfer_stats_data.get(name, 0)
            if value:
                self._counters[(engine_idx, name)].inc(value)
        for seconds in transfer_stats_data.get(stats.DURATIONS, ()):
            self._load_time[engine_idx].observe(seconds)


def cpu_attention_isa(
    vllm_config: VllmConfig, layer_names: list[str], kv: torch.Tensor, head_size: int
) -> str:
    """The kernel ("ISA") vLLM's CPU attention runs for these layers: ``vec``, ``vec16``, ``amx``,
    ``neon``, ... It decides the order K and V sit in inside a block
    (:mod:`lmcache_core.vllm_cpu_order`).

    Read from the layers (``layer.isa``, set by the CPU attention metadata builders before the
    KV caches are registered); every layer must agree. Without it (another vLLM), recomputed with
    vLLM's own ``_get_attn_isa`` from the model dtype, the kernel block size
    (``kv.shape[2]``), ``head_size`` and the cache dtype.
    """
    context = getattr(vllm_config.compilation_config, "static_forward_context", None) or {}
    found = {getattr(context.get(n), "isa", None) for n in layer_names}
    if len(found) == 1 and None not in found:
        return str(found.pop())
    named = sorted(str(isa) for isa in found if isa is not None)
    if len(named) > 1:
        raise ValueError(f"kv_caches: the attention layers run different CPU kernels {named}")
    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    dtype = vllm_config.model_config.dtype  # a torch.dtype once vLLM resolved the config
    model_dtype = dtype if isinstance(dtype, torch.dtype) else kv.dtype
    return str(_get_attn_isa(model_dtype, int(kv.shape[2]), head_size, vllm_config.cache_config.cache_dtype))


def tuple_layout_hints(spec: Any, layer: tuple[Any, ...]) -> LayoutHints:
    """Hints for KV handed over as a tuple of tensors per layer (vllm-ascend), from the group's
    ``kv_cache_spec`` and the first layer's tuple.

    ``(K [NB, BS, H, D], V [NB, BS, H, Dv])`` is ``vllm_ascend`` (``num_kv_heads`` and ``head_size``
    from the spec); an MLA spec (its class name has ``MLA``: vLLM's and vllm-ascend's MLA specs),
    or three tensors, is ``vllm_ascend_mla``: ``(nope, rope)`` or DSA ``(nope, rope, indexer)``,
    whose widths come from the tensors (the spec's ``head_size`` is nope + rope).
    """
    if len(layer) == 3 or "MLA" in type(spec).__name__:
        return LayoutHints(kind="vllm_ascend_mla")
    return LayoutHints(
        kind="vllm_ascend",
        num_kv_heads=getattr(spec, "num_kv_heads", None),
        head_size=getattr(spec, "head_size", None),
    )


class LMCacheCoreConnector(KVConnectorBase_V1):
    """lmcache-core's KV connector for vLLM v1 (see the package docstring for the settings)."""

    _cache_hit_source = CacheHitSource.HOST

    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        ktc = self._kv_transfer_config
        self.settings: ConnectorSettings = load_settings(ktc.kv_connector_extra_config)
        groups = kv_cache_config.kv_cache_groups
        if len(groups) != 1:
            raise ValueError(
                f"kv_cache_config: lmcache-core's connector supports models with one KV cache group, "
                f"this model has {len(groups)} (hybrid attention)"
            )
        self._group = groups[0]
        self._block_size = vllm_config.cache_config.block_size
        par = vllm_config.parallel_config
        self._tp = par.tensor_parallel_size
        self._world = par.tensor_parallel_size * par.pipeline_parallel_size
        self._dp_rank = par.data_parallel_rank
        self._engine_id = str(ktc.engine_id)
        self._model_id = self.settings.engine.get("model_id") or vllm_config.model_config.model
        self._stats = stats.StatsRecorder()
        self._sched: SchedulerSide | None = None
        self._worker: WorkerSide | None = None
        self._rank = 0
        self._storing: set[str] = set()  # requests with stores planned: their blocks wait for them
        if role == KVConnectorRole.SCHEDULER:
            if self.settings.load_failure_policy == "recompute" and ktc.kv_load_failure_policy != "recompute":
                logger.info(
                    "lmcache-core: setting kv_load_failure_policy='recompute' (blocks that fail to load are "
                    "recomputed; set load_failure_policy='vllm' in kv_connector_extra_config to keep '%s')",
                    ktc.kv_load_failure_policy,
                )
                ktc.kv_load_failure_policy = "recompute"
            addrs = [lookup.address(self._engine_id, self._dp_rank, r) for r in range(self._world)]
            client = lookup.LookupClient(
                addrs, lookup.authkey(self._engine_id), self.settings.lookup_timeout_s
            )
            self._sched = SchedulerSide(
                client,
                chunk_size=self.settings.chunk_size,
                block_size=self._block_size,
                load_policy=self.settings.load_policy,
                default_salt=self.settings.engine.get("cache_salt"),
                stats=self._stats,
                load=ktc.is_kv_consumer,
                store=ktc.is_kv_producer,
                load_async=self.settings.load_async,
                store_generated=self.settings.store_generated,
            )
        else:
            from vllm.distributed.parallel_state import get_pp_group, get_tensor_model_parallel_rank

            self._rank = get_pp_group().rank_in_group * self._tp + get_tensor_model_parallel_rank()

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # a cache: a dropped store is a later miss, never lost work

    # ==== worker side ===========================================================================

    def register_kv_caches(self, kv_caches: dict[str, Any]) -> None:
        """``kv_caches``: layer name -> its tensor, or a tuple of tensors per layer as vllm-ascend
        hands them over (``(K, V)``, MLA ``(nope, rope)``, DSA ``(nope, rope, indexer)``)."""
        names = [n for n in self._group.layer_names if n in kv_caches]
        missing = [n for n in self._group.layer_names if n not in kv_caches]
        if missing:
            raise ValueError(f"kv_caches: expected a tensor for every attention layer, missing {missing[:4]}")
        tensors = [kv_caches[n] for n in names]
        spec = self._group.kv_cache_spec
        num_kv_heads = getattr(spec, "num_kv_heads", None)
        head_size = getattr(spec, "head_size", None)
        first = tensors[0]
        kind = isa = None
        if isinstance(first, (tuple, list)):
            tensors = [tuple(t) for t in tensors]
            hints = tuple_layout_hints(spec, tensors[0])
        elif first.device.type == "cpu" and first.dim() == 4 and head_size is not None:
            # vLLM CPU attention: its kernel decides the K/V order inside a block; the layout
            # describes that order, so chunks hold token rows like every other engine's.
            isa = cpu_attention_isa(self._vllm_config, names, first, int(head_size))
            kind = ORDER_KINDS[order_for_isa(isa, dtype_name(first.dtype))]
        cost = CostModel(
            prefill_tokens_per_s=self.settings.prefill_tokens_per_s,
            l1_gbps=self.settings.l1_gbps,
            l2_gbps=self.settings.l2_gbps,
            chunk_overhead_s=self.settings.chunk_overhead_s,
        )
        config = self.settings.engine_config(model_id=self._model_id, world_size=self._world, rank=self._rank)
        engine = None
        if self.settings.server is not None:  # server mode: the cache is lmcache-core serve's
            from lmcache_core.integrations.vllm.server_engine import ServerEngine
            from lmcache_core.server.client import CacheClient

            client = CacheClient(
                self.settings.server,
                timeout=self.settings.server_timeout_s,
                shm_dir=self.settings.server_shm_dir,
                name=f"vllm-{self._engine_id[:16]}-r{self._rank}",
            )
            engine = ServerEngine(config, client, engine_name=self._engine_id)
        self._worker = WorkerSide(
            config,
            block_size=self._block_size,
            cost=cost,
            stats=self._stats,
            address=lookup.address(self._engine_id, self._dp_rank, self._rank),
            key=lookup.authkey(self._engine_id),
            engine=engine,
            store_overlap=self.settings.store_overlap,
        )
        if not isinstance(first, (tuple, list)):
            hints = LayoutHints(kind=kind, num_kv_heads=num_kv_heads, head_size=head_size, isa=isa)
        self._worker.register_kv_caches(tensors, hints)

    @property
    def worker(self) -> WorkerSide:
        if self._worker is None:
            raise RuntimeError("worker: register_kv_caches has not been called")
        return self._worker

    def bind_connector_metadata(self, connector_metadata: KVConnectorMetadata) -> None:
        super().bind_connector_metadata(connector_metadata)
        if self._worker is not None and isinstance(connector_metadata, LMCacheCoreMetadata):
            self._worker.begin_step(connector_metadata.plan)

    def _plan(self) -> StepPlan:
        meta = self._get_connector_metadata()
        if not isinstance(meta, LMCacheCoreMetadata):
            raise TypeError(f"connector metadata: expected LMCacheCoreMetadata, given {type(meta).__name__}")
        return meta.plan

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        plan = self._plan()
        if plan.loads:
            self.worker.load(plan)

    def wait_for_layer_load(self, layer_name: str) -> None:
        return  # synchronous loads are complete when start_load_kv returns

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: AttentionMetadata, **kwargs: Any
    ) -> None:
        return  # stores happen once per step, in wait_for_save

    def wait_for_save(self) -> None:
        if self._worker is not None and self.has_connector_metadata():
            self._worker.save(self._plan())

    def get_finished(self, finished_req_ids: set[str]) -> tuple[set[str] | None, set[str] | None]:
        """``(finished_sending, finished_recving)``: finished requests whose stores have all
        completed (their blocks were held for the copies: :meth:`request_finished` returned True
        for them), and requests whose asynchronous load has ended (loaded, or failed: the blocks
        it did not fill are in :meth:`get_block_ids_with_load_errors` of the same step)."""
        if self._worker is None:
            return None, None
        sending = self._worker.get_finished(set(finished_req_ids))
        recving = self._worker.take_finished_loads()
        return sending or None, recving or None

    def get_block_ids_with_load_errors(self) -> set[int]:
        return self._worker.take_failed_blocks() if self._worker is not None else set()

    def get_kv_connector_stats(self) -> KVConnectorStats | None:
        data = self._stats.take()
        return LMCacheCoreStats(data=data) if data is not None else None

    def shutdown(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # ==== scheduler side ========================================================================

    @property
    def sched(self) -> SchedulerSide:
        if self._sched is None:
            raise RuntimeError("scheduler-side method called on a worker connector")
        return self._sched

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        return self.sched.get_num_new_matched_tokens(request, num_computed_tokens)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        self.sched.update_state_after_alloc(request, blocks, num_external_tokens)

    def get_external_cache_hit_sources(
        self, request: Request, num_external_tokens: int
    ) -> dict[CacheHitSource, int]:
        l1, l2 = self.sched.hit_sources(request.request_id)
        if l1 + l2 != num_external_tokens:
            return super().get_external_cache_hit_sources(request, num_external_tokens)
        return {s: n for s, n in ((CacheHitSource.HOST, l1), (CacheHitSource.DISK, l2)) if n}

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        plan = self.sched.build_connector_meta(scheduler_output)
        self._storing.update(s.req_id for s in plan.stores if not s.finished)
        return LMCacheCoreMetadata(plan)

    def update_connector_output(self, connector_output: KVConnectorOutput) -> None:
        invalid = getattr(connector_output, "invalid_block_ids", None)
        if invalid:
            self.sched.on_load_errors(set(invalid))

    def request_finished(self, request: Request, block_ids: list[int]) -> tuple[bool, dict[str, Any] | None]:
        """True (vLLM keeps the blocks) for a request that had stores planned (its copies may
        still be reading the blocks on the device) or whose generated tokens completed chunks to
        store (``store_generated``: planned for the next step). Every worker saw the same plans,
        so each reports it in ``finished_sending`` once its stores completed (:meth:`get_finished`)."""
        held = self.sched.request_finished(request, block_ids)
        if request.request_id in self._storing:
            self._storing.discard(request.request_id)
            held = True
        return held, None

    # ==== stats classes =========================================================================

    @classmethod
    def build_kv_connector_stats(cls, data: dict[str, Any] | None = None) -> KVConnectorStats | None:
        return LMCacheCoreStats(data=dict(data) if data else stats.empty())

    @classmethod
    def build_prom_metrics(
        cls,
        vllm_config: VllmConfig,
        metric_types: dict[Any, Any],
        labelnames: list[str],
        per_engine_labelvalues: dict[int, list[object]],
    ) -> KVConnectorPromMetrics | None:
        return LMCacheCorePromMetrics(vllm_config, metric_types, labelnames, per_engine_labelvalues)
