"""Load generators for the serving benchmark: OpenAI ``/v1/completions`` requests over HTTP,
streamed, with token-id prompts (so the prompt of every request, and the cache hits it should
get, follow from the workload's structure).

* :class:`ChatSpec` / :func:`run_chat`: ``users`` conversations of ``rounds`` turns; every
  conversation starts with the same system prompt; turn ``r``'s prompt is the system prompt,
  every earlier user turn and reply, then user turn ``r``. Turns arrive as one Poisson stream
  (``rate`` turns per second over all users); each arrival is the next turn of the user who has
  waited longest since their reply arrived (:func:`turn_schedule`), so between two turns of one
  user every other user speaks once: the many-users chat in which a user's history leaves the
  engine's own KV space before the user speaks again. A turn whose user is still waiting for a
  reply waits too (closed loop: the load never exceeds ``users`` requests in flight).
* :class:`NoReuseSpec` / :func:`run_no_reuse`: distinct random prompts at Poisson arrivals.

Each request records its greedy tokens, time to first token, inter-token gaps, and the prompt
tokens a cache holding everything computed before it can serve (:attr:`Result.expected_hit`).
Needs ``aiohttp`` (a dependency of vLLM).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

#: Word ids start here (0..2 are special tokens in the tiny models).
FIRST_WORD = 3


@dataclass(frozen=True)
class ChatSpec:
    """The multi-round chat. The defaults are prefill-heavy (long turns, e.g. pasted documents,
    and short replies), the case a KV cache is for; on a 2-core host they give 96 turns,
    histories up to 3,632 tokens and a working set of 50,432 tokens."""

    users: int = 16
    rounds: int = 6
    system_tokens: int = 512
    user_tokens: int = 512
    answer_tokens: int = 8
    rate: float = 2.5  # turns per second over all users
    seed: int = 0

    def history_tokens(self) -> int:
        """Tokens of one conversation after its last reply."""
        return self.system_tokens + self.rounds * (self.user_tokens + self.answer_tokens)

    def working_set_tokens(self) -> int:
        """Distinct tokens whose KV the whole workload reuses: the system prompt once, then
        every conversation's turns and replies."""
        return self.system_tokens + self.users * self.rounds * (self.user_tokens + self.answer_tokens)


@dataclass(frozen=True)
class NoReuseSpec:
    requests: int = 16
    prompt_tokens: int = 1024
    answer_tokens: int = 8
    rate: float = 1.0  # requests per second
    seed: int = 1


@dataclass
class Result:
    key: str
    round: int
    prompt_tokens: int
    expected_hit: int
    tokens: list[int] = field(default_factory=list)
    ttft_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    start_s: float = 0.0
    end_s: float = 0.0


def words(rng: random.Random, n: int, vocab: int) -> list[int]:
    return [rng.randrange(FIRST_WORD, vocab) for _ in range(n)]


def system_prompt(spec: ChatSpec, vocab: int) -> list[int]:
    return words(random.Random(f"{spec.seed}-system"), spec.system_tokens, vocab)


def user_turn(spec: ChatSpec, user: int, rnd: int, vocab: int) -> list[int]:
    """User ``user``'s turn ``rnd``: the same whatever the number of users or rounds."""
    return words(random.Random(f"{spec.seed}-{user}-{rnd}"), spec.user_tokens, vocab)


def cached_prefix(known: int, block: int) -> int:
    """Prompt tokens a block-granular cache serves when ``known`` leading tokens have KV."""
    return known // block * block


async def complete(session: Any, url: str, prompt: Sequence[int], max_tokens: int, out: Result) -> None:
    """One streamed greedy completion of ``prompt`` into ``out`` (tokens, TTFT, gaps)."""
    body = {"model": "model", "prompt": list(prompt), "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True, "stream": True, "return_token_ids": True}  # fmt: skip
    t0 = time.perf_counter()
    out.start_s = t0
    last = None
    async with session.post(url + "/v1/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{out.key}: HTTP {resp.status}: {(await resp.text())[:500]}")
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            choice = (chunk.get("choices") or [{}])[0]
            ids = choice.get("token_ids") or []
            if not ids:
                continue
            now = time.perf_counter()
            if last is None:
                out.ttft_s = now - t0
            else:
                out.itl_s.append((now - last) / len(ids))
            last = now
            out.tokens.extend(int(t) for t in ids)
    out.end_s = time.perf_counter()
    if len(out.tokens) != max_tokens:
        raise RuntimeError(f"{out.key}: expected {max_tokens} tokens, got {len(out.tokens)}")


def _session() -> Any:
    import aiohttp

    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600))


async def turn_schedule(
    spec: ChatSpec, turn: Callable[[int, int], Awaitable[None]], rounds: int | None = None
) -> None:
    """Run every user's turns (``await turn(user, round)``) at Poisson arrivals of ``spec.rate``
    turns per second over all users (seeded), each arrival given to the user who has waited
    longest since their previous reply (users start in order 0, 1, ...). A user's turns run one
    after the other; an arrival with no waiting user waits for the next reply."""
    rounds = spec.rounds if rounds is None else rounds
    rng = random.Random(f"{spec.seed}-arrivals")
    waiting: asyncio.Queue[int] = asyncio.Queue()
    for u in range(spec.users):
        waiting.put_nowait(u)
    done_rounds = [0] * spec.users
    failures: list[BaseException] = []
    tasks: list[asyncio.Task[None]] = []

    async def one(u: int) -> None:
        try:
            await turn(u, done_rounds[u])
        except Exception as e:
            failures.append(e)
            waiting.put_nowait(-1)  # wakes the arrival loop, which stops the run
            return
        done_rounds[u] += 1
        if done_rounds[u] < rounds:
            waiting.put_nowait(u)

    t0 = time.perf_counter()
    due = 0.0
    try:
        for _ in range(spec.users * rounds):
            due += rng.expovariate(spec.rate)
            await asyncio.sleep(max(0.0, t0 + due - time.perf_counter()))
            u = await waiting.get()
            if u < 0:
                break
            tasks.append(asyncio.create_task(one(u)))
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
    if failures:
        raise failures[0]


async def _chat(
    url: str, spec: ChatSpec, vocab: int, block: int, rounds: int, replay: bool = False
) -> list[Result]:
    system = system_prompt(spec, vocab)
    histories = [list(system) for _ in range(spec.users)]
    known = [len(system)] * spec.users  # the system prompt was served before the clock started
    results: list[Result] = []

    async with _session() as session:

        async def turn(u: int, r: int) -> None:
            prompt = histories[u] + user_turn(spec, u, r, vocab)
            # a replay's prompts were all served before: everything but the last token is cached
            expected = len(prompt) - 1 if replay else cached_prefix(min(known[u], len(prompt) - 1), block)
            res = Result(f"u{u}r{r}", r, len(prompt), expected)
            await complete(session, url, prompt, spec.answer_tokens, res)
            histories[u] = prompt + res.tokens
            known[u] = len(histories[u]) - 1  # the last generated token has no KV
            results.append(res)

        await turn_schedule(spec, turn, rounds)
    return sorted(results, key=lambda r: r.start_s)


def run_chat(url: str, spec: ChatSpec, vocab: int, block: int) -> list[Result]:
    """The chat workload against the server at ``url`` (the system prompt is sent first,
    outside the results: see :func:`warm_up`)."""
    return asyncio.run(_chat(url, spec, vocab, block, spec.rounds))


def run_first_round(url: str, spec: ChatSpec, vocab: int, block: int) -> list[Result]:
    """Only every conversation's first turn, all of them cached before (a restarted server
    replaying round 0 from L2), at the same arrivals."""
    return asyncio.run(_chat(url, spec, vocab, block, 1, replay=True))


async def _no_reuse(url: str, spec: NoReuseSpec, vocab: int) -> list[Result]:
    rng = random.Random(f"{spec.seed}-noreuse")
    prompts = [words(rng, spec.prompt_tokens, vocab) for _ in range(spec.requests)]
    starts, t = [], 0.0
    for _ in prompts:
        t += rng.expovariate(spec.rate)
        starts.append(t)
    results = [Result(f"n{i}", 0, len(p), 0) for i, p in enumerate(prompts)]

    async def one(i: int, session: Any, t0: float) -> None:
        await asyncio.sleep(max(0.0, t0 + starts[i] - time.perf_counter()))
        await complete(session, url, prompts[i], spec.answer_tokens, results[i])

    async with _session() as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i, session, t0) for i in range(len(prompts))))
    return results


def run_no_reuse(url: str, spec: NoReuseSpec, vocab: int) -> list[Result]:
    return asyncio.run(_no_reuse(url, spec, vocab))


def warm_up(url: str, prompt: Sequence[int]) -> None:
    """One request (its time is not measured): the server's first-request costs, and the
    system prompt served once so every conversation's first turn can hit on it."""

    async def go() -> None:
        async with _session() as session:
            await complete(session, url, prompt, 1, Result("warm-up", 0, len(prompt), 0))

    asyncio.run(go())


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (0..100); NaN for no values."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarize(results: Sequence[Result]) -> dict[str, float]:
    """TTFT p50/p90/p99 and mean inter-token latency (ms), requests/s, output tokens/s."""
    ttft = [r.ttft_s for r in results]
    itl = [x for r in results for x in r.itl_s]
    span = max(r.end_s for r in results) - min(r.start_s for r in results)
    out_tokens = sum(len(r.tokens) for r in results)
    return {
        "requests": float(len(results)),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p90_ms": percentile(ttft, 90) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "itl_mean_ms": (sum(itl) / len(itl) * 1e3) if itl else float("nan"),
        "itl_p50_ms": percentile(itl, 50) * 1e3,
        "requests_per_s": len(results) / span if span > 0 else float("nan"),
        "output_tokens_per_s": out_tokens / span if span > 0 else float("nan"),
        "expected_hit_tokens": float(sum(r.expected_hit for r in results)),
    }
