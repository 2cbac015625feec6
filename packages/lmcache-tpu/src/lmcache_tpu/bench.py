"""``lmcache-core bench kernels --backend tpu``: the tpu backend's gather/scatter GB/s next to
``jax.device_put`` of the same bytes between the same memories (the roof), on the JAX platform
present. Reached through the entry point ``tpu`` of ``lmcache_core.bench_kernels``
(:mod:`lmcache_core.bench.array_kernels` runs it); imports JAX.

Per case (``tpu_inference`` layout, KV dtype, head size): a paged KV pool of JAX arrays on the
default device (``layers x [num_pages, page_size, G, p, Dp]``), and, with fresh random blocks for
every call, times

* gather: the backend's gather of ``num_tokens`` rows into a host chunk
  ``[2, layers, num_tokens, hidden]``; roof: ``jax.device_put`` of an array of the chunk's bytes
  from device to the host memory kind the backend uses (``pinned_host``, else ``unpinned_host``);
* scatter: the backend's scatter of such a chunk into the KV (donated; the pool continues with
  the arrays it returns); roof: ``jax.device_put`` of the chunk's bytes from host memory to the
  device.

GB/s = chunk bytes / seconds / 1e9. On JAX's CPU backend every memory is host RAM, so the figures
measure the path's overhead, not a TPU's PCIe/DMA bandwidth. The last gather is checked bit for
bit against the rows read back from the pool with numpy, and the last scatter by gathering its
blocks back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmcache_core.bench.timing import Stats, measure_gbps
from lmcache_core.layout_registry import LayoutHints, detect_layout

#: (name, dtype, num_kv_heads, head_size): the cases timed (8 KV heads; 32 layers, 16-token pages).
CASES = (
    ("bf16_hd128", "bfloat16", 8, 128),
    ("fp8_hd64", "float8_e4m3fn", 8, 64),
    ("fp32_hd128", "float32", 8, 128),
)
LAYERS, PAGE, TOKENS = 32, 16, 256
QUICK_LAYERS, QUICK_TOKENS = 4, 64


@dataclass(frozen=True)
class CaseResult:
    """One case and op: the backend's figure, the roof's, and the check."""

    case: str
    op: str
    chunk_bytes: int
    kernel: Stats
    roof: Stats
    verified: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "case": self.case,
            "op": self.op,
            "chunk_bytes": self.chunk_bytes,
            "kernel_gbps": self.kernel.to_json(),
            "roof_gbps": self.roof.to_json(),
            "ratio_kernel_roof": self.kernel.median / self.roof.median,
            "verified": self.verified,
        }


def describe() -> str:
    """``JAX 0.10.2 on cpu (TFRT_CPU_0), device <-> pinned_host``."""
    from lmcache_tpu import settings, xla

    dev = jax.devices()[0]
    kind = xla.host_memory_kind(dev, settings.read().host_memory) or "host (device_get)"
    return f"JAX {jax.__version__} on {jax.default_backend()} ({dev}), device <-> {kind}"


def _pool(
    dtype: str, heads: int, head_size: int, layers: int, pages: int, seed: int
) -> tuple[list[Any], Any]:
    import torch

    from lmcache_core.layout_registry import allocate_example

    example, hints = allocate_example(
        "tpu_inference", num_layers=layers, num_blocks=1, block_size=PAGE, num_kv_heads=heads,
        head_size=head_size, dtype=getattr(torch, dtype),
    )  # fmt: skip
    shape = (pages, *example[0].shape[1:])
    np_dtype = np.dtype(jnp.dtype(dtype))
    key = jax.random.key(seed)
    kv = []
    for layer in range(layers):
        raw = jax.random.bits(jax.random.fold_in(key, layer), shape, dtype=np.dtype(f"u{np_dtype.itemsize}"))
        kv.append(jax.lax.bitcast_convert_type(raw, jnp.dtype(dtype)))
    twins = [torch.empty((pages, *t.shape[1:]), dtype=t.dtype, device="meta") for t in example]
    layout = detect_layout(twins, LayoutHints(**{**hints.__dict__}))
    return kv, layout


def _matches_reference(layout: Any, kv: list[Any], slots: np.ndarray, chunk: np.ndarray) -> bool:
    """``chunk`` equals, bit for bit, the core reference kernel's gather of ``slots`` from host
    copies of ``kv`` (an independent implementation)."""
    import torch

    from lmcache_core.backend import reference_backend

    def twin(a: np.ndarray) -> Any:
        return torch.from_numpy(np.array(a).view(f"u{a.dtype.itemsize}")).view(getattr(torch, a.dtype.name))

    expected = torch.zeros(chunk.shape, dtype=getattr(torch, chunk.dtype.name))
    reference_backend().gather(layout, [twin(np.asarray(a)) for a in kv], torch.from_numpy(slots), expected)
    return bool(np.array_equal(chunk.view(np.uint8), expected.view(torch.uint8).numpy()))


def run_case(
    name: str, dtype: str, heads: int, head_size: int, *, layers: int, tokens: int, pool_bytes: int,
    repeats: int, warmup: int, seed: int,
) -> list[CaseResult]:  # fmt: skip
    """Gather and scatter of one case (see the module docstring)."""
    from lmcache_core.selection import get_backend
    from lmcache_tpu import settings, xla

    backend = get_backend(jax.devices()[0].platform, name="tpu", array_type="jax")
    itemsize = np.dtype(jnp.dtype(dtype)).itemsize
    page_bytes = layers * PAGE * 2 * heads * max(head_size, 128) * itemsize
    pages = max(pool_bytes // page_bytes, 4 * tokens // PAGE)
    kv, layout = _pool(dtype, heads, head_size, layers, pages, seed)
    jax.block_until_ready(kv)
    rng = np.random.default_rng(seed)
    total = warmup + repeats
    blocks_per_call = -(-tokens // PAGE)

    def mapping() -> np.ndarray:
        blocks = rng.choice(pages, blocks_per_call, replace=False)
        return (blocks[:, None] * PAGE + np.arange(PAGE)).reshape(-1)[:tokens].astype(np.int64)

    chunk_shape = layout.chunk_format.shape(tokens)
    np_dtype = np.dtype(jnp.dtype(dtype))
    chunks = [np.zeros(chunk_shape, dtype=np_dtype) for _ in range(2)]
    nbytes = chunks[0].nbytes
    dev = jax.devices()[0]
    host_kind = xla.host_memory_kind(dev, settings.read().host_memory)
    device_sharding = jax.sharding.SingleDeviceSharding(dev, memory_kind=dev.default_memory().kind)
    on_device = jax.device_put(np.zeros(nbytes, np.uint8), device_sharding)
    host_sharding = jax.sharding.SingleDeviceSharding(dev, memory_kind=host_kind) if host_kind else None
    on_host = jax.device_put(np.zeros(nbytes, np.uint8), host_sharding) if host_sharding else None
    sync = lambda: jax.block_until_ready(kv)  # noqa: E731
    out: list[CaseResult] = []

    maps = [mapping() for _ in range(total)]
    gather = measure_gbps(
        lambda i: backend.gather(layout, kv, maps[i], chunks[i % 2]), sync, nbytes, repeats, warmup
    )
    verified = _matches_reference(layout, kv, maps[-1], chunks[(total - 1) % 2])

    def put_host(i: int) -> Any:
        return jax.block_until_ready(jax.device_put(on_device, host_sharding or dev))

    out.append(
        CaseResult(
            name,
            "gather",
            nbytes,
            gather,
            measure_gbps(put_host, lambda: None, nbytes, repeats, warmup),
            verified,
        )
    )

    state = {"kv": kv}
    src = np.frombuffer(rng.bytes(nbytes), dtype=np_dtype).reshape(chunk_shape).copy()
    maps = [mapping() for _ in range(total)]

    def scatter(i: int) -> None:
        state["kv"] = backend.scatter(layout, state["kv"], maps[i], src, 0)

    scat = measure_gbps(scatter, lambda: jax.block_until_ready(state["kv"]), nbytes, repeats, warmup)
    back = np.zeros(chunk_shape, dtype=np_dtype)
    backend.gather(layout, state["kv"], maps[-1], back, 0)
    ok = np.array_equal(back.view(np.uint8), src.view(np.uint8))

    def put_device(i: int) -> Any:
        return jax.block_until_ready(jax.device_put(on_host if on_host is not None else src, device_sharding))

    out.append(
        CaseResult(
            name, "scatter", nbytes, scat, measure_gbps(put_device, lambda: None, nbytes, repeats, warmup), ok
        )
    )
    return out


def run(*, quick: bool, repeats: int, warmup: int, pool_mib: int | None, seed: int) -> dict[str, Any]:
    """Every case; the report as one JSON-able document (``results``: :class:`CaseResult` rows)."""
    layers, tokens = (QUICK_LAYERS, QUICK_TOKENS) if quick else (LAYERS, TOKENS)
    pool = (pool_mib or (16 if quick else 256)) << 20
    results: list[CaseResult] = []
    for name, dtype, heads, head_size in CASES:
        results += run_case(
            name, dtype, heads, head_size, layers=layers, tokens=tokens, pool_bytes=pool,
            repeats=repeats, warmup=warmup, seed=seed,
        )  # fmt: skip
    notes = []
    if jax.default_backend() != "tpu":
        notes.append(
            f"JAX platform {jax.default_backend()}: every memory kind is host RAM; these figures "
            "measure the path's overhead, not a TPU's bandwidth"
        )
    return {
        "roof": describe(),
        "layers": layers,
        "tokens": tokens,
        "page_size": PAGE,
        "results": [r.to_json() for r in results],
        "all_verified": all(r.verified for r in results),
        "notes": notes,
    }
