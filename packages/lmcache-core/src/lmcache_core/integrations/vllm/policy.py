"""Load or recompute: which cached prefix is worth loading, from costs measured online.

A cached chunk can be put back into the engine's KV from its tier (L1 host memory or an L2 tier)
or recomputed by the engine's prefill. Loading wins when ``nbytes / tier_bandwidth`` is below
``tokens * prefill_seconds_per_token``; a slow tier (a loaded file system, a remote store over a
thin link) can lose. Because only a *prefix* can be loaded, the choice is the cut ``k`` that
maximises the summed saving of chunks ``0 .. k-1``::

    saving_i = tokens_i * prefill_s_per_token - (nbytes_i / bandwidth(tier_i) + chunk_overhead_s)

:class:`CostModel` keeps the estimates, starting from priors and updated from every load and
every measured engine step (exponential moving averages); :func:`choose_load_prefix` makes the
choice and says why. Until a step has been measured, it loads every hit: the prior prefill speed
is a guess, and declining a real hit on a guess costs more than loading one.

On a GPU the forward is asynchronous: the host returns from enqueueing it long before the device
finishes, so host time around the forward would make recompute look 10-100x cheaper than it is.
The worker therefore times sampled steps between two waits for the compute stream
(:meth:`~lmcache_core.integrations.vllm.worker.WorkerSide.begin_step`). Plain Python: no torch,
no vLLM.

An L2 tier's bandwidth is measured in *plain* bytes (the chunk as it lands in the engine's KV)
per second of the whole load: reading the stored object and running its codec chain
(:mod:`lmcache_core.serde`: decompression, decryption, fp8/int8 dequantization), which happen
inside that load. A compressed tier therefore looks faster by its ratio and slower by its
decode time, and ``nbytes`` in the saving above is the plain size too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

#: Tiers a chunk can come from.
TIERS = ("L1", "L2")


@dataclass(frozen=True)
class ChunkSource:
    """One cached chunk past what the engine holds: its end (tokens into the prompt), the tokens
    it would add (``end - max(start, already_computed)``), its bytes and its tier (``L1``/``L2``)."""

    end: int
    tokens: int
    nbytes: int
    tier: str


@dataclass(frozen=True)
class CostEstimates:
    """What the model believes now. Bandwidths in bytes per second; times in seconds."""

    prefill_s_per_token: float
    step_overhead_s: float
    l1_bytes_per_s: float
    l2_bytes_per_s: float
    chunk_overhead_s: float
    prefill_samples: int = 0
    l1_samples: int = 0
    l2_samples: int = 0

    def bandwidth(self, tier: str) -> float:
        if tier == "L1":
            return self.l1_bytes_per_s
        if tier == "L2":
            return self.l2_bytes_per_s
        raise ValueError(f"tier: expected one of {list(TIERS)}, given {tier!r}")

    def load_seconds(self, tier: str, nbytes: int) -> float:
        return nbytes / self.bandwidth(tier) + self.chunk_overhead_s

    def recompute_seconds(self, tokens: int) -> float:
        return tokens * self.prefill_s_per_token

    def to_dict(self) -> dict[str, float]:
        return {
            "prefill_s_per_token": self.prefill_s_per_token,
            "step_overhead_s": self.step_overhead_s,
            "l1_bytes_per_s": self.l1_bytes_per_s,
            "l2_bytes_per_s": self.l2_bytes_per_s,
            "chunk_overhead_s": self.chunk_overhead_s,
            "prefill_samples": self.prefill_samples,
            "l1_samples": self.l1_samples,
            "l2_samples": self.l2_samples,
        }

    @classmethod
    def from_dict(cls, d: dict[str, float]) -> CostEstimates:
        return cls(
            float(d["prefill_s_per_token"]),
            float(d["step_overhead_s"]),
            float(d["l1_bytes_per_s"]),
            float(d["l2_bytes_per_s"]),
            float(d["chunk_overhead_s"]),
            int(d.get("prefill_samples", 0)),
            int(d.get("l1_samples", 0)),
            int(d.get("l2_samples", 0)),
        )


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive number, given {value!r}")
    return float(value)


class CostModel:
    """Online estimates of prefill speed and of each tier's load bandwidth. Thread-safe.

    ``prefill_tokens_per_s``, ``l1_gbps`` and ``l2_gbps`` (1e9 bytes/s) are the priors used until
    measurements arrive; ``alpha`` is the weight of a new measurement in the moving average.
    Steps of at least ``min_prefill_tokens`` tokens measure the per-token prefill cost (after the
    fixed per-step overhead, measured on steps of at most ``max_overhead_tokens`` tokens).
    """

    def __init__(
        self,
        prefill_tokens_per_s: float = 20_000.0,
        l1_gbps: float = 4.0,
        l2_gbps: float = 0.5,
        chunk_overhead_s: float = 5e-5,
        alpha: float = 0.3,
        min_prefill_tokens: int = 32,
        max_overhead_tokens: int = 8,
    ) -> None:
        self._prefill = 1.0 / _positive("prefill_tokens_per_s", prefill_tokens_per_s)
        self._l1 = _positive("l1_gbps", l1_gbps) * 1e9
        self._l2 = _positive("l2_gbps", l2_gbps) * 1e9
        if isinstance(chunk_overhead_s, bool) or not isinstance(chunk_overhead_s, (int, float)):
            raise TypeError(f"chunk_overhead_s: expected a number of seconds, given {chunk_overhead_s!r}")
        if chunk_overhead_s < 0:
            raise ValueError(f"chunk_overhead_s: expected >= 0 seconds, given {chunk_overhead_s!r}")
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha: expected a weight in (0, 1], given {alpha!r}")
        self._chunk_overhead = float(chunk_overhead_s)
        self._alpha = alpha
        self._overhead = 0.0
        self._min_prefill = min_prefill_tokens
        self._max_overhead = max_overhead_tokens
        self._n = {"prefill": 0, "L1": 0, "L2": 0, "overhead": 0}
        self._lock = threading.Lock()

    def _ema(self, old: float, new: float, kind: str) -> float:
        n = self._n[kind]
        self._n[kind] = n + 1
        return new if n == 0 else (1 - self._alpha) * old + self._alpha * new

    def observe_step(self, tokens: int, seconds: float) -> None:
        """One engine forward of ``tokens`` scheduled tokens took ``seconds``."""
        if tokens <= 0 or seconds <= 0:
            return
        with self._lock:
            if tokens <= self._max_overhead:
                self._overhead = self._ema(self._overhead, seconds, "overhead")
            elif tokens >= self._min_prefill:
                per_token = max(seconds - self._overhead, seconds * 0.5) / tokens
                self._prefill = self._ema(self._prefill, per_token, "prefill")

    def observe_load(self, l1_bytes: int, l2_bytes: int, chunks: int, seconds: float) -> None:
        """A load moved ``l1_bytes`` from L1 and ``l2_bytes`` from L2 in ``chunks`` chunks.

        A load from L1 only measures L1. With L2 bytes, the time L1's share would have taken at
        the current L1 estimate is subtracted and the rest is L2's (at least a tenth of the total).
        """
        if seconds <= 0 or l1_bytes + l2_bytes <= 0:
            return
        with self._lock:
            busy = max(seconds - chunks * self._chunk_overhead, seconds * 0.5)
            if l2_bytes == 0:
                self._l1 = self._ema(self._l1, l1_bytes / busy, "L1")
            else:
                l2_time = max(busy - l1_bytes / self._l1, busy * 0.1)
                self._l2 = self._ema(self._l2, l2_bytes / l2_time, "L2")

    @property
    def min_prefill_tokens(self) -> int:
        """Steps of at least this many tokens measure the prefill speed."""
        return self._min_prefill

    def estimates(self) -> CostEstimates:
        with self._lock:
            return CostEstimates(
                self._prefill,
                self._overhead,
                self._l1,
                self._l2,
                self._chunk_overhead,
                self._n["prefill"],
                self._n["L1"],
                self._n["L2"],
            )


@dataclass(frozen=True)
class LoadDecision:
    """The prefix to load and why. Token counts are positions in the prompt (prefix ends)."""

    hit_end: int
    load_end: int
    l1_tokens: int
    l2_tokens: int
    est_load_s: float
    est_recompute_s: float
    declined_tokens: int
    reason: str

    @property
    def loads(self) -> bool:
        return self.load_end > 0


def choose_load_prefix(
    chunks: Sequence[ChunkSource], est: CostEstimates, policy: str = "cost", computed: int = 0
) -> LoadDecision:
    """Choose how much of the cached prefix ``chunks`` (in prompt order) to load.

    ``policy`` ``"cost"`` loads the prefix with the largest estimated saving (none when no prefix
    saves time), weighing every prefix length, so a first chunk mostly held by the engine (few new
    tokens, a whole chunk's bytes) does not stop the load of the chunks after it; before any
    prefill was measured (``est.prefill_samples == 0``) it loads every hit. ``"always"`` loads
    every hit chunk. ``computed``: tokens the engine already holds.
    """
    if policy not in ("cost", "always"):
        raise ValueError(f"policy: expected one of ['always', 'cost'], given {policy!r}")
    hit_end = chunks[-1].end if chunks else 0
    if not chunks:
        return LoadDecision(0, 0, 0, 0, 0.0, 0.0, 0, "no cached chunk past the engine's own prefix")
    best_k, best_saving, acc = 0, 0.0, 0.0
    loads, recs = [], []
    for i, c in enumerate(chunks):
        load = est.load_seconds(c.tier, c.nbytes)
        rec = est.recompute_seconds(c.tokens)
        loads.append(load)
        recs.append(rec)
        acc += rec - load
        if acc > best_saving:
            best_k, best_saving = i + 1, acc
    unmeasured = policy == "cost" and est.prefill_samples == 0
    if policy == "always" or unmeasured:
        best_k = len(chunks)
    total_tokens = sum(c.tokens for c in chunks)
    chosen = chunks[:best_k]
    load_s, rec_s = sum(loads[:best_k]), sum(recs[:best_k])
    l1 = sum(c.tokens for c in chosen if c.tier == "L1")
    l2 = sum(c.tokens for c in chosen if c.tier == "L2")
    declined = total_tokens - l1 - l2
    load_end = chosen[-1].end if chosen else 0
    rate = f"prefill {1 / est.prefill_s_per_token:,.0f} tok/s"
    bws = f"L1 {est.l1_bytes_per_s / 1e9:.2f} GB/s, L2 {est.l2_bytes_per_s / 1e9:.2f} GB/s"
    if unmeasured:
        reason = (
            f"prefill speed not measured yet: load all {total_tokens} hit tokens (est load "
            f"{load_s * 1e3:.2f} ms, recompute at the prior {rec_s * 1e3:.2f} ms)"
        )
    elif policy == "always":
        reason = f"policy always: load {total_tokens} tokens (est load {load_s * 1e3:.2f} ms, recompute {rec_s * 1e3:.2f} ms)"
    elif best_k == len(chunks):
        reason = (
            f"load all {total_tokens} hit tokens: est load {load_s * 1e3:.2f} ms < recompute "
            f"{rec_s * 1e3:.2f} ms ({rate}; {bws})"
        )
    elif best_k == 0:
        all_load, all_rec = sum(loads), sum(recs)
        reason = (
            f"recompute all {total_tokens} hit tokens: est load {all_load * 1e3:.2f} ms >= recompute "
            f"{all_rec * 1e3:.2f} ms ({rate}; {bws})"
        )
    else:
        rest_load, rest_rec = sum(loads[best_k:]), sum(recs[best_k:])
        reason = (
            f"load {l1 + l2} of {total_tokens} hit tokens (est {load_s * 1e3:.2f} ms < {rec_s * 1e3:.2f} ms); "
            f"recompute the last {declined}: their load est {rest_load * 1e3:.2f} ms >= recompute "
            f"{rest_rec * 1e3:.2f} ms ({rate}; {bws})"
        )
    return LoadDecision(hit_end, load_end, l1, l2, load_s, rec_s, declined, reason)


def chunk_sources(
    hit_end: int, l1_end: int, chunk_size: int, computed: int, bytes_per_token: float
) -> list[ChunkSource]:
    """The chunks of a lookup that found ``hit_end`` tokens (the first ``l1_end`` of them in L1,
    the rest in L2), past the ``computed`` tokens the engine holds. Chunk ``i`` spans
    ``[i*chunk_size, min((i+1)*chunk_size, hit_end))``."""
    out = []
    start = 0
    while start < hit_end:
        end = min(start + chunk_size, hit_end)
        if end > computed:
            tokens = end - max(start, computed)
            out.append(
                ChunkSource(
                    end, tokens, int((end - start) * bytes_per_token), "L1" if end <= l1_end else "L2"
                )
            )
        start = end
    return out
