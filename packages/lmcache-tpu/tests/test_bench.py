"""``bench kernels --backend tpu``: found through the core's plugin kernel-bench entry point, every
case's gather and scatter checked bit for bit (speed is reported by the bench, not asserted)."""

from __future__ import annotations

from lmcache_core.bench import array_kernels


def test_tpu_kernel_bench_runs_every_case_bit_exact() -> None:
    assert array_kernels.available()["tpu"] == "lmcache_tpu.bench"
    doc = array_kernels.run("tpu", quick=True, repeats=1, warmup=0, pool_mib=1, seed=0)
    assert doc["backend"] == "tpu" and doc["all_verified"]
    assert [(r["case"], r["op"]) for r in doc["results"]] == [
        (c, op) for c in ("bf16_hd128", "fp8_hd64", "fp32_hd128") for op in ("gather", "scatter")
    ]
    assert all(r["kernel_gbps"]["median"] > 0 and r["roof_gbps"]["median"] > 0 for r in doc["results"])
    assert "device <-> pinned_host" in doc["roof"] and "overhead" in doc["notes"][0]
