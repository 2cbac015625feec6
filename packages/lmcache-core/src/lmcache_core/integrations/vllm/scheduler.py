"""Scheduler side of the vLLM connector: how many prompt tokens come from the cache, and the
per-step plan of loads and stores for the workers.

Per request:

1. ``get_num_new_matched_tokens(request, num_computed)``: look the prompt up in every worker's
   cache engine (:mod:`.lookup`; chunk-granular, L1 then L2), keep the prefix that beats
   recomputing (:mod:`.policy`), cap it one token short of the prompt (vLLM computes at least the
   last token) and answer ``(matched - num_computed, load_async)``. ``load_async`` (setting
   ``load_async``): ``l2`` (default) when part of the load comes from L2, ``always``, or
   ``never``. An asynchronous load runs in the worker's loader thread while vLLM keeps stepping
   the other requests; vLLM holds the request in ``WAITING_FOR_REMOTE_KVS`` until the worker
   reports it in ``finished_recving``.
2. ``update_state_after_alloc``: once vLLM admitted the request with ``n > 0`` external tokens,
   plan its load (an asynchronous one with the blocks vLLM just allocated: the request is not
   scheduled this step); count the lookup in the stats.
3. ``build_connector_meta``: a :class:`~.plan.StepPlan` with the loads admitted this step and a
   store for every request whose computed prompt tokens crossed a chunk boundary (or reached
   the end of the prompt).
4. ``update_connector_output``: blocks that failed to load are recomputed by vLLM; the store
   marker of their request moves back so the recomputed chunks are stored.
5. ``request_finished``: with ``store_generated`` (default on), the chunks the generated tokens
   completed are stored at the start of the next step (:meth:`SchedulerSide.request_finished`
   returns True: the connector holds the blocks until that store has read them), so a chat's
   next turn (history plus this reply) hits on the reply too, even when it is looked up before
   that step ran (the planned store counts as cached). Then the request is forgotten.

Prompt tokens are stored as they are computed, generated ones when the request finishes (only
tokens whose KV was computed: all but the last sampled one). Chunks hold token rows, so
a chunk may end inside a block: the prompt's last chunk (partial last block included) is stored
too, and ``chunk_size`` need not be a multiple of the block size. Works on duck-typed vLLM objects (``request.request_id``, ``.prompt_token_ids``,
``.cache_salt``; ``SchedulerOutput``), so it imports no vLLM.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from lmcache_core.integrations.vllm.lookup import LookupClient, LookupUnavailable
from lmcache_core.integrations.vllm.plan import LoadSpec, StepPlan, StoreSpec
from lmcache_core.integrations.vllm.policy import (
    CostEstimates,
    LoadDecision,
    choose_load_prefix,
    chunk_sources,
)
from lmcache_core.integrations.vllm.stats import StatsRecorder

logger = logging.getLogger(__name__)


@dataclass
class _Request:
    prompt: list[int]
    salt: str | None
    cacheable: bool = True
    block_ids: list[int] = field(default_factory=list)
    stored_end: int = 0
    loading_async: bool = False


#: ``load_async`` settings: when a load is asynchronous.
LOAD_ASYNC_MODES = ("l2", "always", "never")


@dataclass
class _Pending:
    decision: LoadDecision
    computed: int
    matched_end: int
    lookup_tokens: int


class SchedulerSide:
    """The scheduler connector's state. ``client`` reaches every worker's lookup handler."""

    def __init__(
        self,
        client: LookupClient,
        *,
        chunk_size: int,
        block_size: int,
        load_policy: str,
        default_salt: str | None,
        stats: StatsRecorder,
        load: bool = True,
        store: bool = True,
        load_async: str = "l2",
        store_generated: bool = True,
    ) -> None:
        if load_async not in LOAD_ASYNC_MODES:
            raise ValueError(f"load_async: expected one of {list(LOAD_ASYNC_MODES)}, given {load_async!r}")
        self._client = client
        self.chunk_size = chunk_size
        self.block_size = block_size
        self.load_policy = load_policy
        self._default_salt = default_salt
        self._load_enabled = load  # vLLM's kv_role: kv_consumer / kv_both load, kv_producer does not
        self._store_enabled = store  # kv_producer / kv_both store, kv_consumer does not
        self.load_async = load_async
        self.store_generated = store_generated
        self.stats = stats
        self._async_loads: list[LoadSpec] = []  # admitted asynchronous loads, for the next plan
        self._final_stores: list[StoreSpec] = []  # stores of finished requests, for the next plan
        self._requests: dict[str, _Request] = {}
        self._pending: dict[str, _Pending] = {}
        self._to_load: dict[str, _Pending] = {}
        self._sources: dict[str, tuple[int, int]] = {}
        self._last_warning = 0.0

    # ---- lookup -----------------------------------------------------------------------------

    def _salt(self, request: Any) -> str | None:
        """The request's ``cache_salt`` (else the configured one), plus its LoRA adapter's name:
        the same tokens give different KV under a different adapter."""
        salt = getattr(request, "cache_salt", None)
        salt = salt if salt is not None else self._default_salt
        lora = getattr(request, "lora_request", None)
        if lora is not None:
            salt = f"{salt or ''}\0lora:{lora.lora_name}"
        return salt

    def _remember(self, request: Any) -> _Request:
        st = self._requests.get(request.request_id)
        if st is None:
            # Multimodal inputs sit behind placeholder tokens that do not name their content:
            # such prompts are neither looked up nor stored.
            cacheable = not getattr(request, "mm_features", None)
            st = _Request(list(request.prompt_token_ids or []), self._salt(request), cacheable)
            self._requests[request.request_id] = st
        return st

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int, bool]:
        prompt = request.prompt_token_ids
        if not prompt or len(prompt) < 2:
            return 0, False
        st = self._remember(request)
        if not st.cacheable or not self._load_enabled:
            return 0, False
        try:
            answers = self._client.lookup(st.prompt, st.salt)
        except LookupUnavailable as e:
            self.stats.inc(lookup_errors=1)
            now = time.monotonic()
            if now - self._last_warning > 30:
                self._last_warning = now
                logger.warning("lmcache-core lookup failed, computing the prompt instead: %s", e)
            return 0, False
        hit = min(int(a["hit"]) for a in answers)
        l1 = min(int(a["l1"]) for a in answers)
        hit, l1 = self._with_final_stores(st, hit, l1)
        est = CostEstimates.from_dict(answers[0]["estimates"])
        chunks = chunk_sources(
            hit, l1, self.chunk_size, num_computed_tokens, float(answers[0]["bytes_per_token"])
        )
        decision = choose_load_prefix(chunks, est, self.load_policy)
        matched_end = min(decision.load_end, len(prompt) - 1)
        logger.debug(
            "request %s: %d prompt tokens, vLLM holds %d, cached %d (L1 %d); %s",
            request.request_id,
            len(prompt),
            num_computed_tokens,
            hit,
            min(l1, hit),
            decision.reason,
        )
        self._pending[request.request_id] = _Pending(decision, num_computed_tokens, matched_end, len(prompt))
        n = max(0, matched_end - num_computed_tokens)
        return n, n > 0 and self._is_async(decision)

    def _with_final_stores(self, st: _Request, hit: int, l1: int) -> tuple[int, int]:
        """Extend the workers' hit by the stores of finished requests planned for the next step:
        the workers run them at the start of that step, before its loads (and the new request is
        admitted, at the earliest, in that step), so a chat's next turn hits on the reply just
        generated. Chunk-granular: the common prefix with the planned tokens, in whole chunks."""
        for spec in self._final_stores:
            if spec.cache_salt != st.salt:
                continue
            n = min(len(spec.token_ids), len(st.prompt))
            common = 0
            while common < n and spec.token_ids[common] == st.prompt[common]:
                common += 1
            end = common // self.chunk_size * self.chunk_size
            if end > hit:
                if l1 >= hit:  # everything before is in L1 too: the run stays in L1
                    l1 = end
                hit = end
        return hit, l1

    def _is_async(self, d: LoadDecision) -> bool:
        """Whether a load of ``d`` runs off the step (see the module docstring)."""
        if self.load_async == "always":
            return True
        return self.load_async == "l2" and d.l2_tokens > 0

    def update_state_after_alloc(self, request: Any, blocks: Any, num_external_tokens: int) -> None:
        pending = self._pending.pop(request.request_id, None)
        if pending is None:
            return
        d = pending.decision
        l1 = min(d.l1_tokens, num_external_tokens)
        l2 = num_external_tokens - l1
        self.stats.inc(
            lookups=1,
            lookup_tokens=pending.lookup_tokens,
            hit_tokens=max(0, d.hit_end - pending.computed),
            matched_tokens=num_external_tokens,
            l1_matched_tokens=l1,
            l2_matched_tokens=l2,
            declined_tokens=d.declined_tokens,
        )
        if num_external_tokens > 0:
            self._sources[request.request_id] = (l1, l2)
            if self._is_async(d):  # vLLM does not schedule it this step: plan the load now
                st = self._remember(request)
                st.block_ids = list(blocks.get_block_ids()[0])
                st.loading_async = True
                self._to_load[request.request_id] = pending
                spec = self._load_spec(request.request_id, st)
                if spec is not None:
                    spec.load_async = True
                    self._async_loads.append(spec)
            else:
                self._to_load[request.request_id] = pending

    def hit_sources(self, request_id: str) -> tuple[int, int]:
        """(L1 tokens, L2 tokens) of the request's admitted load."""
        return self._sources.get(request_id, (0, 0))

    # ---- per step ---------------------------------------------------------------------------

    def _load_spec(self, req_id: str, st: _Request) -> LoadSpec | None:
        pending = self._to_load.pop(req_id, None)
        if pending is None:
            return None
        d = pending.decision
        st.stored_end = max(st.stored_end, d.load_end)  # what is loaded is cached already
        return LoadSpec(
            req_id,
            st.prompt[: d.load_end],
            list(st.block_ids),
            pending.computed,
            pending.matched_end,
            st.salt,
        )

    def _store_spec(self, req_id: str, st: _Request, computed_after: int) -> StoreSpec | None:
        if not st.cacheable or not self._store_enabled:
            return None
        n = len(st.prompt)
        if computed_after >= n:
            target = n  # the whole prompt, its partial last block included
        else:
            target = computed_after // self.chunk_size * self.chunk_size
        if target <= st.stored_end:
            return None
        st.stored_end = target
        return StoreSpec(req_id, st.prompt[:target], list(st.block_ids), st.salt)

    def build_connector_meta(self, scheduler_output: Any) -> StepPlan:
        so = scheduler_output
        plan = StepPlan(scheduled_tokens=int(getattr(so, "total_num_scheduled_tokens", 0)))
        plan.loads.extend(self._async_loads)
        plan.stores.extend(self._final_stores)
        self._async_loads, self._final_stores = [], []
        for nr in so.scheduled_new_reqs:
            st = self._requests.get(nr.req_id)
            if st is None:  # not asked about (e.g. prompt embeddings): not cached
                st = _Request(list(nr.prompt_token_ids or []), self._default_salt, cacheable=False)
                self._requests[nr.req_id] = st
            st.block_ids = list(nr.block_ids[0]) if nr.block_ids else []
            st.loading_async = False  # scheduled: an asynchronous load has arrived
            load = self._load_spec(nr.req_id, st)
            if load is not None:
                plan.loads.append(load)
            store = self._store_spec(
                nr.req_id, st, nr.num_computed_tokens + so.num_scheduled_tokens[nr.req_id]
            )
            if store is not None:
                plan.stores.append(store)
        cached = so.scheduled_cached_reqs
        resumed: set[str] = set(getattr(cached, "resumed_req_ids", ()))
        for i, req_id in enumerate(cached.req_ids):
            st = self._requests.get(req_id)
            if st is None:
                continue
            new_blocks = cached.new_block_ids[i]
            if req_id in resumed:
                st.block_ids = list(new_blocks[0]) if new_blocks else []
                st.stored_end = min(st.stored_end, cached.num_computed_tokens[i])
            elif new_blocks is not None:
                st.block_ids.extend(new_blocks[0])
            load = self._load_spec(req_id, st)
            if load is not None:
                plan.loads.append(load)
            store = self._store_spec(
                req_id, st, cached.num_computed_tokens[i] + so.num_scheduled_tokens[req_id]
            )
            if store is not None:
                plan.stores.append(store)
        if self._to_load:
            logger.warning("loads planned for requests not scheduled this step: %s", sorted(self._to_load))
            self._to_load.clear()
        self._sources.clear()
        return plan

    def on_load_errors(self, invalid_block_ids: set[int]) -> None:
        """Blocks that failed to load will be recomputed: store their chunks again after that."""
        if not invalid_block_ids:
            return
        for st in self._requests.values():
            for i, b in enumerate(st.block_ids):
                if b in invalid_block_ids:
                    first = i * self.block_size // self.chunk_size * self.chunk_size
                    st.stored_end = min(st.stored_end, first)
                    break

    def request_finished(self, request: Any, block_ids: list[int] | None = None) -> bool:
        """Forget the request. With ``store_generated``, plan the store of the chunks its
        generated tokens completed (prompt plus output up to the last token whose KV was
        computed) into the next step's plan and return True: its blocks (``block_ids``, vLLM's
        ids of the first group) must stay allocated until that store has read them."""
        rid = request.request_id
        st = self._requests.get(rid)
        held = False
        if (
            st is not None
            and self.store_generated
            and self._store_enabled
            and st.cacheable
            and not st.loading_async
            and block_ids
        ):
            computed = int(getattr(request, "num_computed_tokens", 0))
            all_ids = list(getattr(request, "all_token_ids", st.prompt))
            end = min(computed, len(all_ids), len(block_ids) * self.block_size)
            target = end // self.chunk_size * self.chunk_size
            if target > max(st.stored_end, len(st.prompt) // self.chunk_size * self.chunk_size):
                self._final_stores.append(
                    StoreSpec(rid, all_ids[:target], list(block_ids), st.salt, finished=True)
                )
                held = True
        self._requests.pop(rid, None)
        self._pending.pop(rid, None)
        self._to_load.pop(rid, None)
        self._sources.pop(rid, None)
        return held
