"""Pieces of ``lmcache-core bench serve`` that need no vLLM server: the workload's structure
(expected hits), statistics, the CPU binding, and ``/metrics`` scraped over HTTP from a real
prometheus-client exporter. The whole bench runs against real ``vllm serve`` servers (its
numbers are in docs/performance.md)."""

from __future__ import annotations

import asyncio
import http.server
import threading
import time

import pytest

from lmcache_core.bench.serve import combine
from lmcache_core.bench.serve_load import (
    ChatSpec,
    Result,
    cached_prefix,
    percentile,
    summarize,
    system_prompt,
    turn_schedule,
    user_turn,
)
from lmcache_core.bench.vllm_server import CpuBinding, ServerConfig, binding_from_log, scrape_metrics

# What vLLM 0.32's ompmultiprocessing logs (utils/ompmultiprocessing.py, _parse_omp_threads_bind_env).
VLLM_LOG = (
    "(EngineCore pid=1) INFO 11-30 13:32:01 [ompmultiprocessing.py:187] OpenMP thread binding info: \n"
    "\tVLLM_CPU_OMP_THREADS_BIND='0', auto_setup=False, skip_setup=False\n"
    "\tlocal_world_size=1, reserve_cpu_num=1\n"
    "\tlocal_rank=0, core ids=[0]\n"
    "\treserved_cpus=[]\n"
)


def test_chat_structure_gives_the_expected_hits() -> None:
    spec = ChatSpec(users=3, rounds=4, system_tokens=256, user_tokens=112, answer_tokens=48)
    assert spec.history_tokens() == 256 + 4 * 160
    assert spec.working_set_tokens() == 256 + 3 * 4 * 160
    # a turn's KV is known up to the previous reply's last token but one, in whole blocks
    assert cached_prefix(256 + 112 + 48 - 1, 32) == 384
    assert cached_prefix(31, 32) == 0
    # turns do not depend on how many users or rounds there are
    assert user_turn(spec, 1, 2, 4096) == user_turn(ChatSpec(users=9, rounds=2, user_tokens=112), 1, 2, 4096)
    assert len(system_prompt(spec, 4096)) == 256 and min(system_prompt(spec, 4096)) >= 3


def test_percentiles_and_summary() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 90) == pytest.approx(9.0)
    rs = [Result("a", 0, 100, 64, [1, 2, 3], 0.1, [0.01, 0.03], 0.0, 1.0),
          Result("b", 1, 200, 128, [4, 5, 6], 0.3, [0.02, 0.02], 0.5, 2.0)]  # fmt: skip
    s = summarize(rs)
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["itl_mean_ms"] == pytest.approx(20.0)
    assert s["requests_per_s"] == pytest.approx(1.0) and s["output_tokens_per_s"] == pytest.approx(3.0)
    assert s["expected_hit_tokens"] == 192


def test_every_server_gets_the_same_explicit_binding() -> None:
    b = CpuBinding.default()
    assert b.threads_bind and b.reserved >= 0
    assert set(b.env()) == {"VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU"}
    plain = ServerConfig("a", "/m", None, 10, binding=b)
    with_connector = ServerConfig("b", "/m", {"chunk_size": 32}, 10, binding=b)
    assert plain.binding == with_connector.binding
    args = with_connector.args(8000)
    assert "--enable-prefix-caching" in args and "--kv-transfer-config" in args
    assert args[args.index("--num-gpu-blocks-override") + 1] == "10"
    assert "--kv-transfer-config" not in plain.args(8000)
    assert binding_from_log(VLLM_LOG) == (
        "VLLM_CPU_OMP_THREADS_BIND='0'; reserve_cpu_num=1; local_rank=0, core ids=[0]"
    )
    assert binding_from_log("no binding here") == "(vLLM logged no binding)"


def test_metrics_are_scraped_over_http_and_summed_over_labels() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    hits = prometheus_client.Counter(
        "vllm:prefix_cache_hits", "hits", ["engine", "model_name"], registry=registry
    )
    hits.labels("0", "m").inc(96)
    hits.labels("1", "m").inc(32)
    ext = prometheus_client.Counter("vllm:external_prefix_cache_hits", "ext", ["engine"], registry=registry)
    ext.labels("0").inc(7)
    body = prometheus_client.generate_latest(registry)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/metrics" else 404)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        got = scrape_metrics(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    assert got["vllm:prefix_cache_hits_total"] == 128
    assert got["vllm:external_prefix_cache_hits_total"] == 7
    assert got["vllm:lmcache_core_matched_tokens_total"] == 0  # not exported: 0


def test_turns_go_round_robin_so_a_user_speaks_again_after_every_other_user() -> None:
    spec = ChatSpec(users=4, rounds=3, rate=2000.0, seed=5)
    order: list[tuple[int, int]] = []
    running: set[int] = set()

    async def turn(u: int, r: int) -> None:
        assert u not in running  # one turn of a user at a time
        running.add(u)
        order.append((u, r))
        await asyncio.sleep(0.002)
        running.discard(u)

    t0 = time.perf_counter()
    asyncio.run(turn_schedule(spec, turn))
    assert time.perf_counter() - t0 < 5
    assert len(order) == 12
    assert order[:4] == [(0, 0), (1, 0), (2, 0), (3, 0)]
    for u in range(4):
        assert [r for v, r in order if v == u] == [0, 1, 2]
    # between two turns of one user, every other user had one (the longest-waiting user goes next)
    for i, (u, r) in enumerate(order):
        if r > 0:
            prev = order.index((u, r - 1))
            assert {v for v, _ in order[prev + 1 : i]} == set(range(4)) - {u}


def test_a_failing_turn_ends_the_schedule_with_its_error() -> None:
    spec = ChatSpec(users=3, rounds=5, rate=1000.0)
    calls: list[tuple[int, int]] = []

    async def turn(u: int, r: int) -> None:
        calls.append((u, r))
        await asyncio.sleep(0.001)
        if (u, r) == (1, 1):
            raise RuntimeError("u1r1: HTTP 500")

    with pytest.raises(RuntimeError, match="u1r1: HTTP 500"):
        asyncio.run(asyncio.wait_for(turn_schedule(spec, turn), timeout=10))
    assert len(calls) < 15


def _run(ttft_ms: float, rps: float, expected: float, hits: float, keys: list[str]) -> dict[str, object]:
    return {
        "name": "chat",
        "wall_s": 1.0,
        "summary": {
            "requests": 2.0,
            "ttft_p50_ms": ttft_ms,
            "requests_per_s": rps,
            "expected_hit_tokens": expected,
        },
        "metrics": {"hit_tokens": hits, "declined_tokens": 0.0},
        "rows": [{"key": k, "round": 0, "ttft_s": ttft_ms / 1e3, "tokens": [1]} for k in keys],
        "loadavg": [1.0, 2.0, 3.0],
    }


def test_repetitions_combine_into_medians_sums_and_pooled_rows() -> None:
    runs = [_run(100.0, 2.0, 64, 64, ["a"]), _run(300.0, 1.0, 32, 32, ["a"]), _run(200.0, 4.0, 0, 0, ["a"])]
    c = combine(runs)  # type: ignore[arg-type]
    assert c["summary"]["ttft_p50_ms"] == 200.0 and c["summary"]["requests_per_s"] == 2.0
    assert c["summary"]["requests"] == 6 and c["summary"]["expected_hit_tokens"] == 96
    assert c["metrics"]["hit_tokens"] == 96
    assert [r["key"] for r in c["rows"]] == ["0:a", "1:a", "2:a"]  # repetitions keep their keys apart
    with pytest.raises(ValueError, match="runs"):
        combine([])
