"""Worker side of the vLLM connector: one :class:`~lmcache_core.cache_engine.CacheEngine` per
worker (tensor/pipeline-parallel rank), loads before the forward, stores after it.

* ``register_kv_caches``: the KV tensors of every attention layer, in layer order, are described
  by :func:`~lmcache_core.layout_registry.detect_layout` (``vllm_cpu*`` on CPU, by attention
  kernel; the flash layouts on GPU); the backend for their device is chosen; the lookup
  handler is served (:mod:`.lookup`).
* ``load`` (vLLM's ``start_load_kv``): for each planned synchronous load, scatter the cached
  chunks into the request's blocks before the forward. Asynchronous loads (``LoadSpec.load_async``)
  are queued to the loader thread, which runs them while vLLM steps the other requests;
  ``take_finished_loads`` hands the ended ones to vLLM's ``finished_recving``. A load that stops
  early (chunk evicted, L2 object corrupt or unreachable, backend error) reports the blocks it
  did not fill (before the request is reported finished); vLLM recomputes them.
* ``save`` (vLLM's ``wait_for_save``, called right after the forward is *enqueued*): queue the
  gathers of the chunks the step completed. They run on the engine's copy stream after the
  forward, on the device; the host does not wait. Each chunk is committed to L1 (and L2 by
  write-behind) when its copy completes, seen by the polls at the next step and in
  ``get_finished``. A request whose load failed this step stores nothing this step: its later
  tokens were computed against the blocks that failed.
* ``store_overlap`` (CPU KV): the step's stores run on a store thread pinned to the CPUs vLLM's
  binding leaves spare (:mod:`.store_thread`), so the step's sampled tokens do not wait for the
  gather; the next step waits for them before its loads and forward.
* ``get_finished``: a request that had stores planned is held by vLLM (``request_finished``
  returned True) until every store of it has completed; it is then reported in
  ``finished_sending``, so vLLM frees its blocks only after the copies read them.
* Timing: every load feeds the tier bandwidth estimates; sampled steps feed the prefill-speed
  estimate (:class:`~.policy.CostModel`), timed between two waits for the compute stream, so the
  device's time is measured, not the host's enqueue time. The lookup handler returns the
  estimates to the scheduler.

vLLM 0.32's CPU attention keeps each (block, head)'s K and V in its kernel's own order (K
transposed, ``[head_size, block_size]``, for the ``vec`` kernels; VNNI tiles for ``amx``; BFMMLA
tiles for bf16 on Arm). The connector reads the kernel from the engine and the layout describes
that order (:mod:`lmcache_core.vllm_cpu_order`), so chunks hold true token rows, the same bytes a
GPU engine of the same model stores: any chunk size works and a prompt's partial last block is
stored too.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from lmcache_core.cache_engine import CacheEngine, CacheResult
from lmcache_core.config import CacheEngineConfig
from lmcache_core.integrations.vllm import lookup as lookup_mod
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec, slot_mapping
from lmcache_core.integrations.vllm.policy import CostModel
from lmcache_core.integrations.vllm.stats import StatsRecorder
from lmcache_core.integrations.vllm.store_thread import StoreThread, check_store_overlap, spare_cpus
from lmcache_core.layout_registry import LayoutHints

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

#: Steps timed on the device: the first ``SAMPLE_FIRST`` prefill-sized steps, then one in
#: ``SAMPLE_EVERY`` steps. A timed step costs two host waits for the compute stream.
SAMPLE_FIRST = 8
SAMPLE_EVERY = 16


class WorkerSide:
    """The worker connector's state for one rank.

    ``address``/``key``: where to serve lookups (None: serve none, e.g. in tests). ``engine``:
    what holds the cache (default: an in-process CacheEngine of ``config``). ``store_overlap``:
    one of :data:`~.store_thread.STORE_OVERLAP` (applies to KV on the CPU).
    """

    def __init__(
        self,
        config: CacheEngineConfig,
        *,
        block_size: int,
        cost: CostModel,
        stats: StatsRecorder,
        address: str | None = None,
        key: bytes | None = None,
        engine: Any = None,
        store_overlap: str = "off",
    ) -> None:
        check_store_overlap(store_overlap)
        self.config = config
        self.block_size = block_size
        self.cost = cost
        self.stats = stats
        #: the in-process CacheEngine, or a stand-in with its calls (server mode:
        #: :class:`~.server_engine.ServerEngine`)
        self.engine = engine if engine is not None else CacheEngine(config)
        self._kv: list[Any] = []  # per layer: a tensor, or a tuple of tensors (Ascend)
        self._lock = threading.RLock()
        self._address = address
        self._key = key
        self._server: lookup_mod.LookupServer | None = None
        self._failed_blocks: set[int] = set()
        self._failed_reqs: set[str] = set()
        self._step_start: float | None = None
        self._steps = 0
        self._timed_steps = 0
        self._store_reqs: set[str] = set()
        self._finishing: set[str] = set()
        self._load_time = 0.0
        self._chunk_nbytes = 0
        self._bytes_per_token = 0.0
        self._loads: queue.SimpleQueue[LoadSpec | None] = queue.SimpleQueue()
        self._loader: threading.Thread | None = None
        self._loaded: set[str] = set()  # asynchronous loads ended, not yet reported
        self._loading = 0  # asynchronous loads queued or running
        self._load_lock = threading.Lock()
        self._store_overlap = store_overlap
        self._store_thread: StoreThread | None = None

    # ---- set-up -----------------------------------------------------------------------------

    def register_kv_caches(self, kv_caches: Sequence[Any], hints: LayoutHints | None = None) -> None:
        """Describe the layer tensors (layer order; a tensor or a tuple of tensors per layer) and
        start answering lookups."""
        with self._lock:
            self._kv = list(kv_caches)
            spec = self.engine.register_kv_caches(self._kv, hints)
            self._chunk_nbytes = spec.chunk_nbytes(self.config.chunk_size)
            self._bytes_per_token = self._chunk_nbytes / self.config.chunk_size
        self._start_store_thread()
        if self._address is not None:
            lookup_mod.register_local(self._address, self.lookup)
            if self._key is not None:
                self._server = lookup_mod.LookupServer(self._address, self.lookup, self._key)
        logger.info(
            "lmcache-core worker rank %d/%d: %s, backend %s, chunk %d tokens (%d bytes), lookups at %s",
            self.config.rank,
            self.config.world_size,
            spec.groups[0].describe(),
            self.engine.backend.name,
            self.config.chunk_size,
            self._chunk_nbytes,
            self._address,
        )

    def _start_store_thread(self) -> None:
        """A store thread for CPU KV (``store_overlap``), on the CPUs the engine thread leaves."""
        first = self._kv[0][0] if isinstance(self._kv[0], tuple) else self._kv[0]
        if self._store_thread is not None or self._store_overlap == "off" or first.device.type != "cpu":
            return
        cpus = spare_cpus()
        if not cpus and self._store_overlap == "auto":
            logger.info("lmcache-core: stores run in the step (no CPU outside the engine thread's binding)")
            return
        self._store_thread = StoreThread(cpus)
        logger.info("lmcache-core: stores run on a store thread, CPUs %s", sorted(cpus) if cpus else "(any)")

    def close(self) -> None:
        if self._store_thread is not None:
            self._store_thread.close()
            self._store_thread = None
        if self._loader is not None:
            self._loads.put(None)
            self._loader.join(timeout=60)
            self._loader = None
        if self._address is not None:
            lookup_mod.unregister_local(self._address)
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            self.engine.close()

    # ---- lookup (called by the scheduler, in or out of process) -------------------------------

    def lookup(self, tokens: Sequence[int], cache_salt: str | None) -> dict[str, Any]:
        """``{"hit", "l1", "bytes_per_token", "estimates"}``: cached prefix (tokens, chunk-granular),
        the part of it in L1, this rank's bytes per token, and the cost model's estimates."""
        with self._lock:
            found = self.engine.lookup(tokens, cache_salt=cache_salt)
        return {
            "hit": found.tokens,
            "l1": found.l1_tokens,
            "bytes_per_token": self._bytes_per_token,
            "estimates": self.cost.estimates().to_dict(),
        }

    # ---- per step ---------------------------------------------------------------------------

    def begin_step(self, plan: StepPlan | None = None) -> None:
        """The step's metadata arrived: the forward is about to be enqueued.

        Commits the stores that completed since the last step, and queues the stores of finished
        requests (their blocks are held; the step's loads may read those chunks). A sampled step (see
        :data:`SAMPLE_FIRST`) waits for the compute stream here and again in :meth:`save`, so the
        time between is the device's time for this step's loads and forward.
        """
        if self._store_thread is not None:
            self._store_thread.join()  # the last step's stores read blocks this step may write
        self._load_time = 0.0
        self._failed_reqs.clear()
        self._step_start = None
        if not self._kv:
            return
        self.engine.poll_stores()
        final = [s for s in plan.stores if s.finished] if plan is not None else []
        for spec in final:  # finished requests' held blocks: nothing writes them, store them now
            self._store_reqs.add(spec.req_id)
            self._store_one(spec)
        if final and plan is not None and plan.loads:
            self.engine.wait_stores()  # this step's loads may read the chunks just stored
        self._steps += 1
        tokens = plan.scheduled_tokens if plan is not None else 0
        big = tokens >= self.cost.min_prefill_tokens
        if (big and self._timed_steps < SAMPLE_FIRST) or self._steps % SAMPLE_EVERY == 0:
            self._wait_compute()
            self._step_start = time.perf_counter()

    def _wait_compute(self) -> None:
        """Host wait for everything enqueued so far on the KV device's compute stream."""
        backend = self.engine.backend
        first = self._kv[0][0] if isinstance(self._kv[0], tuple) else self._kv[0]  # (K, V) per layer: Ascend
        backend.synchronize(backend.record_event(backend.current_stream(first.device)))

    def _slots(self, block_ids: list[int], n: int) -> torch.Tensor:
        import torch

        return torch.from_numpy(slot_mapping(block_ids, n, self.block_size))

    def load(self, plan: StepPlan) -> None:
        """Scatter every planned synchronous load into vLLM's blocks (before the forward); queue
        the asynchronous ones to the loader thread."""
        t_all = time.perf_counter()
        for spec in plan.loads:
            if spec.load_async:
                self._queue_load(spec)
            else:
                self._load_one(spec)
        self._load_time += time.perf_counter() - t_all

    def _queue_load(self, spec: LoadSpec) -> None:
        with self._load_lock:
            self._loading += 1
            if self._loader is None:
                self._loader = threading.Thread(target=self._run_loads, name="lmcache-loader", daemon=True)
                self._loader.start()
        self._loads.put(spec)

    def _run_loads(self) -> None:
        """The loader thread: asynchronous loads in arrival order, each reported when it ended."""
        while True:
            spec = self._loads.get()
            if spec is None:
                return
            try:
                self._load_one(spec)
            except Exception:  # _load_one reports its own failures; this is a bug, keep serving
                logger.exception("lmcache-core: asynchronous load of request %s", spec.req_id)
                self._fail_blocks(spec, spec.skip)
            self.stats.inc(async_loads=1)
            with self._load_lock:
                self._loading -= 1
                self._loaded.add(spec.req_id)

    def take_finished_loads(self) -> set[str]:
        """Requests whose asynchronous load ended since the last call (vLLM's
        ``finished_recving``); blocks that failed are already in :meth:`take_failed_blocks`."""
        with self._load_lock:
            out, self._loaded = self._loaded, set()
        return out

    def loads_in_flight(self) -> int:
        with self._load_lock:
            return self._loading

    def _fail_blocks(self, spec: LoadSpec, good_end: int) -> set[int]:
        first, last = good_end // self.block_size, (spec.matched_end - 1) // self.block_size
        bad = set(spec.block_ids[first : last + 1])
        with self._load_lock:
            self._failed_blocks |= bad
            if not spec.load_async:
                self._failed_reqs.add(spec.req_id)
        return bad

    def _load_one(self, spec: LoadSpec) -> None:
        n = len(spec.token_ids)
        expected = n - spec.skip
        with self._lock:
            t0 = time.perf_counter()
            try:
                result = self.engine.retrieve(
                    spec.token_ids,
                    self._kv,
                    self._slots(spec.block_ids, n),
                    skip_leading_tokens=spec.skip,
                    cache_salt=spec.cache_salt,
                )
            except Exception:
                logger.exception(
                    "lmcache-core: load of request %s failed; vLLM will recompute it", spec.req_id
                )
                # what a failed call moved is unknown: its time counts, as a load of nothing
                result = CacheResult(seconds=time.perf_counter() - t0)
        loaded, nbytes, dt = result.tokens, result.nbytes, result.seconds
        self.cost.observe_load(result.l1_bytes, result.l2_bytes, result.chunks, dt)
        good_end = spec.skip + loaded
        self.stats.inc(loads=1, loaded_tokens=loaded, loaded_bytes=nbytes, load_seconds=dt)
        self.stats.load_duration(dt)
        if loaded < expected and good_end < spec.matched_end:
            bad = self._fail_blocks(spec, good_end)
            self.stats.inc(load_failed_tokens=spec.matched_end - good_end, load_failed_blocks=len(bad))
            logger.warning(
                "lmcache-core: request %s loaded %d of %d tokens; %d blocks handed back to vLLM to recompute",
                spec.req_id,
                loaded,
                expected,
                len(bad),
            )
        else:
            logger.debug(
                "request %s: loaded %d tokens (%d bytes) in %.2f ms", spec.req_id, loaded, nbytes, dt * 1e3
            )

    def save(self, plan: StepPlan) -> None:
        """Queue the stores of the chunks the step completed; on a sampled step, first wait for
        the forward and record its device time."""
        if self._step_start is not None:
            self._wait_compute()
            forward = time.perf_counter() - self._step_start - self._load_time
            self.cost.observe_step(plan.scheduled_tokens, forward)
            self._timed_steps += 1
            self._step_start = None
        specs = []
        for spec in plan.stores:
            if spec.finished:
                continue  # stored at the start of the step (begin_step)
            self._store_reqs.add(spec.req_id)
            if spec.req_id in self._failed_reqs:
                logger.debug("request %s: not stored this step (its load failed)", spec.req_id)
                continue
            specs.append(spec)
        if self._store_thread is not None and specs:
            self._store_thread.submit(lambda: self._store_all(specs))
        else:
            self._store_all(specs)

    def _store_all(self, specs: list[StoreSpec]) -> None:
        for spec in specs:
            self._store_one(spec)

    def _store_one(self, spec: StoreSpec) -> None:
        n = len(spec.token_ids)
        with self._lock:
            try:
                stored = self.engine.store(
                    spec.token_ids,
                    self._kv,
                    self._slots(spec.block_ids, n),
                    cache_salt=spec.cache_salt,
                    owner=spec.req_id,
                )
            except Exception:
                logger.exception("lmcache-core: store of request %s failed; it stays uncached", spec.req_id)
                return
        self.stats.inc(
            stores=1, stored_tokens=stored.tokens, stored_bytes=stored.nbytes, store_seconds=stored.seconds
        )

    def get_finished(self, finished_req_ids: set[str]) -> set[str]:
        """Requests of ``finished_req_ids`` (finished in the scheduler, blocks held for us) and of
        earlier calls whose stores have all completed: vLLM's ``finished_sending``. Never blocks:
        while the store thread runs this step's stores, nothing is reported (next step)."""
        self._finishing |= finished_req_ids & self._store_reqs
        self._store_reqs -= finished_req_ids
        if self._store_thread is not None and self._store_thread.busy:
            return set()
        with self._lock:
            if self._kv:
                self.engine.poll_stores()
            done = {r for r in self._finishing if not self.engine.stores_in_flight(r)}
            self._finishing -= done
        return done

    def flush(self, timeout_s: float) -> bool:
        """Wait for the store thread's stores and their copies, then for L2 write-behind (tools
        and tests; the engine never waits for this). False when L2 did not finish in time."""
        if self._store_thread is not None:
            self._store_thread.join()
        with self._lock:
            if self._kv:
                self.engine.wait_stores()
        return bool(self.engine.flush(timeout_s))

    def stores_in_flight(self) -> int:
        busy = self._store_thread is not None and self._store_thread.busy
        return self.engine.stores_in_flight() + int(busy)

    def take_failed_blocks(self) -> set[int]:
        """Blocks that failed to load since the last call (vLLM recomputes them)."""
        with self._load_lock:
            out, self._failed_blocks = self._failed_blocks, set()
        return out
