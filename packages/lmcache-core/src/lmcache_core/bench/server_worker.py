"""One worker process of ``lmcache-core bench server`` (:mod:`lmcache_core.bench.server`).

``python -m lmcache_core.bench.server_worker MODE ENDPOINT[#ROUND] INDEX PARAMS_JSON``; MODE is
``server`` (RemoteCacheEngine against ENDPOINT) or ``inproc`` (a CacheEngine of its own).
Protocol on stdin/stdout: prints ``ready``, then for each phase waits for a line, runs it and
prints ``<phase> {json}`` (``start``/``end`` in CLOCK_MONOTONIC seconds, shared by every process
of the host, and ``bytes``; lookup adds ``latencies``); finally waits for a line and prints
``done``. Exits 1 (with the reason on stderr) when retrieved bytes differ from stored ones.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def main(argv: list[str]) -> int:
    import numpy as np
    import torch

    from lmcache_core.bench.server import Params
    from lmcache_core.config import CacheEngineConfig
    from lmcache_core.layout_registry import LayoutHints

    mode, endpoint, index, raw = argv
    p = Params(**json.loads(raw))
    endpoint, _, rnd = endpoint.partition("#")
    seed = int(rnd or 0) * 1000 + int(index)
    dtype = getattr(torch, p.dtype)
    blocks = -(-p.tokens // p.block_size)
    g = torch.Generator().manual_seed(seed)
    src = [
        torch.randn(2, blocks, p.block_size, p.heads, p.head_dim, generator=g).to(dtype)
        for _ in range(p.layers)
    ]
    dst = [torch.zeros_like(t) for t in src]
    slots = torch.arange(p.tokens, dtype=torch.int64)
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(0, 2**31, p.tokens, dtype=np.uint32) for _ in range(p.prompts)]
    hints = LayoutHints(kind="vllm_flash_nhd")
    config = CacheEngineConfig(
        model_id="bench", chunk_size=p.chunk_size, l1_bytes=2 * p.prompts * p.prompt_bytes + 2**26
    )
    engine: Any
    if mode == "server":
        from lmcache_core.server.remote import RemoteCacheEngine

        engine = RemoteCacheEngine(
            endpoint, config, layout_hints=hints, engine=f"bench-{index}", timeout=30.0
        )
    elif mode == "inproc":
        from lmcache_core.cache_engine import CacheEngine

        engine = CacheEngine(config, layout_hints=hints)
    else:
        print(f"mode: expected server or inproc, given {mode!r}", file=sys.stderr)
        return 2
    engine.register_kv_caches(src)
    # warm-up outside the timing: first touches of KV, backend set-up, the connection
    engine.lookup(prompts[0][: p.chunk_size])

    def barrier() -> None:
        sys.stdout.flush()
        sys.stdin.readline()

    def report(phase: str, start: float, nbytes: int, **extra: Any) -> None:
        print(phase, json.dumps({"start": start, "end": time.monotonic(), "bytes": nbytes, **extra}))

    print("ready")
    barrier()
    t0, stored = time.monotonic(), 0
    for tokens in prompts:
        stored += engine.store(tokens, src, slots).nbytes
    engine.wait_stores()
    report("store", t0, stored)
    barrier()
    t0, loaded = time.monotonic(), 0
    for tokens in prompts:
        r = engine.retrieve(tokens, dst, slots)
        loaded += r.nbytes
    report("retrieve", t0, loaded)
    barrier()
    lat = []
    t0 = time.monotonic()
    for _ in range(p.lookups):
        for tokens in prompts:
            s = time.perf_counter()
            engine.lookup(tokens)
            lat.append(time.perf_counter() - s)
    report("lookup", t0, 0, latencies=lat)
    for a, b in zip(src, dst, strict=True):
        if not torch.equal(a.flatten(1, 2)[:, : p.tokens], b.flatten(1, 2)[:, : p.tokens]):
            print(f"worker {index} ({mode}): retrieved KV differs from stored KV", file=sys.stderr)
            return 1
    if stored != p.prompts * p.prompt_bytes or loaded != stored:
        print(f"worker {index} ({mode}): stored {stored} B, loaded {loaded} B, expected {p.prompts * p.prompt_bytes}",
              file=sys.stderr)  # fmt: skip
        return 1
    barrier()
    print("done", flush=True)
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
