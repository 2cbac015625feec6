"""LMCacheCPUBackend against tpu-inference 0.32.0's interface as its source defines it (the wheel
does not install here: it pins jax 0.11.2, this index has 0.10.2), and functionally on JAX CPU
arrays: pages put by one "host" process come back bit for bit in a new process through a shared
fs L2 tier, under slot ids of its own."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import textwrap
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lmcache_core.testing.numpy_oracle import numpy_gather, numpy_scatter
from lmcache_tpu.testing import bits, tpu_kv
from lmcache_tpu.tpu_inference import host_backend
from lmcache_tpu.tpu_inference.host_backend import (
    LMCacheCPUBackend,
    adopt_l2_hits,
    bind_requests,
    load_error_blocks,
)

# tpu_inference 0.32.0, tpu_inference/offload/cpu_backend.py (read from the wheel):
#   39  def __init__(self, num_cpu_chunks: int)          attributes max_num_cpu_chunks, cache,
#                                                       current_size_bytes (40-42)
#   49  @property num_saved_cpu_chunks(self) -> int
#   66  def add(self, chunk_id: CpuChunkId, value: Any) -> bool
#   98  def get(self, chunk_id: CpuChunkId) -> Optional[Any]
#  106  def reclaim_unoccupied_chunks(self, occupied_chunk_ids: list[CpuChunkId])
# CpuChunkId = int (offload/utils.py:30). Callers: tpu_offload_connector.py:1556 (constructed with
# the keyword num_cpu_chunks), :2158 (add), :2496 (get).
INTERFACE = {
    "__init__": ["self", "num_cpu_chunks"],
    "add": ["self", "chunk_id", "value"],
    "get": ["self", "chunk_id"],
    "reclaim_unoccupied_chunks": ["self", "occupied_chunk_ids"],
}
ATTRIBUTES = ("max_num_cpu_chunks", "cache", "current_size_bytes", "num_saved_cpu_chunks")
# tpu_inference/platforms/tpu_platform.py:525-533: the names the TPU platform accepts.
ALLOWED_CONNECTOR_NAMES = ("TPUConnector", "TPUConnectorHMA", "TPUOffloadConnector", "RaidenOffloadConnector")
# tpu_offload_connector.py:441-447: TPUOffloadConnector.__init__(self, vllm_config, role, kv_cache_config=None)
CONNECTOR_INIT = ["self", "vllm_config", "role", "kv_cache_config"]

REPO = Path(__file__).resolve().parents[4]


def test_backend_has_local_cpu_backends_methods_and_signatures() -> None:
    for name, params in INTERFACE.items():
        sig = inspect.signature(getattr(LMCacheCPUBackend, name))
        positional = [p.name for p in sig.parameters.values() if p.kind is not p.KEYWORD_ONLY]
        assert positional == params, name
        extra = [p for p in sig.parameters.values() if p.kind is p.KEYWORD_ONLY]
        assert all(p.default is not p.empty for p in extra), name  # callers pass only the interface's
    assert isinstance(inspect.getattr_static(LMCacheCPUBackend, "num_saved_cpu_chunks"), property)
    backend = LMCacheCPUBackend(num_cpu_chunks=4)
    assert all(hasattr(backend, a) for a in ATTRIBUTES)
    assert (backend.max_num_cpu_chunks, backend.num_saved_cpu_chunks, backend.current_size_bytes) == (4, 0, 0)
    with pytest.raises(ValueError, match="chunk_id: expected 0 <= chunk_id < 4, given 4"):
        backend.add(4, np.zeros(1))


def test_connector_is_named_as_the_platform_allows_and_takes_three_arguments() -> None:
    path = REPO / "packages/lmcache-tpu/src/lmcache_tpu/tpu_inference/connector.py"
    tree = ast.parse(path.read_text())
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
    public = [name for name in classes if not name.startswith("_")]
    assert public == ["TPUOffloadConnector"] and public[0] in ALLOWED_CONNECTOR_NAMES
    init = next(
        f
        for f in classes["TPUOffloadConnector"].body
        if isinstance(f, ast.FunctionDef) and f.name == "__init__"
    )
    assert [a.arg for a in init.args.args] == CONNECTOR_INIT and len(init.args.defaults) == 1
    docs = (REPO / "docs/tpu.md").read_text()
    assert '"kv_connector_module_path": "lmcache_tpu.tpu_inference.connector"' in docs


# ---- work orders as tpu_offload_connector.py:162-202 defines them (SaveSpec, LoadSpec, TPUReqMeta)


@dataclass
class SaveSpec:
    num_skip_leading_tokens: int
    num_total_tokens: int
    src_blocks: list[int]
    dst_chunks: list[int]
    is_final_save: bool = False
    skip_save: bool = False


@dataclass
class LoadSpec:
    num_matched_tokens: int
    src_chunks: list[int]
    dst_blocks: list[int]
    can_load: bool = False
    num_skip_leading_tokens: int = 0


@dataclass
class TPUReqMeta:
    req_id: str
    token_ids: list[int]
    local_block_ids: list[int]
    save_spec: SaveSpec | None = None
    load_spec: LoadSpec | None = None


@dataclass
class _Chunk:
    chunk_id: int
    ref_cnt: int = -1


@dataclass
class LRUCacheManager:
    """offload/offload_manager.py:129-230 (lookup, allocate_for_save, complete_save), same rules:
    a chunk is loadable at ref_cnt 0; allocate_for_save skips known hashes and returns (chunks,
    their indices) or None when it cannot make room."""

    num_chunks: int
    cpu_cache: OrderedDict[Any, _Chunk] = field(default_factory=OrderedDict)

    def lookup(self, chunk_hashes: list[Any]) -> int:
        n = 0
        for h in chunk_hashes:
            c = self.cpu_cache.get(h)
            if c is None or c.ref_cnt != 0:
                break
            n += 1
        return n

    def allocate_for_save(self, chunk_hashes: list[Any]) -> tuple[list[_Chunk], list[int]] | None:
        idxs = [i for i, h in enumerate(chunk_hashes) if h not in self.cpu_cache]
        free = [i for i in range(self.num_chunks) if i not in {c.chunk_id for c in self.cpu_cache.values()}]
        if not idxs or len(idxs) > len(free):
            return None
        chunks = [_Chunk(free[j]) for j in range(len(idxs))]
        for i, c in zip(idxs, chunks, strict=True):
            self.cpu_cache[chunk_hashes[i]] = c
        return chunks, idxs

    def complete_save(self, chunk_hashes: list[Any]) -> None:
        for h in chunk_hashes:
            assert self.cpu_cache[h].ref_cnt == -1
            self.cpu_cache[h].ref_cnt = 0


def test_adopt_l2_hits_gives_found_blocks_loadable_slots() -> None:
    manager = LRUCacheManager(num_chunks=8)
    made = manager.allocate_for_save(["h0"])
    assert made is not None
    manager.complete_save(["h0"])
    hashes = ["h0", "h1", "h2", "h3"]
    assert manager.lookup(hashes) == 1
    assert adopt_l2_hits(manager, hashes, 3) == 2
    assert manager.lookup(hashes) == 3
    assert adopt_l2_hits(manager, hashes, 3) == 0
    assert adopt_l2_hits(LRUCacheManager(num_chunks=1), hashes, 3) == 0  # no room: nothing adopted


def test_bind_requests_maps_slots_to_the_prefix_of_their_block(tmp_path: Path) -> None:
    backend = _backend(tmp_path, "bfloat16", 128)
    tokens = list(range(100, 112))  # 3 pages of 4
    metas = [
        TPUReqMeta("a", tokens, [7, 2, 9], save_spec=SaveSpec(4, 12, src_blocks=[9], dst_chunks=[5])),
        TPUReqMeta("b", tokens[:8], [4, 6, 8], load_spec=LoadSpec(8, [1, 3], [4, 6], can_load=True)),
        TPUReqMeta("c", tokens[:4], [3, 1], load_spec=LoadSpec(8, [0, 2], [3, 1], can_load=True)),
    ]
    assert bind_requests(backend, metas, 4) == 4  # c's second block lies past its tokens: unbound
    assert backend._bound[5].tolist() == tokens and backend._bound[3].tolist() == tokens[:8]
    assert backend._bound[1].tolist() == tokens[:4] and 2 not in backend._bound
    assert load_error_blocks(metas, {3, 2}) == {6, 1}
    backend.close()


def _backend(tmp_path: Path, dtype: str, head_size: int) -> LMCacheCPUBackend:
    from lmcache_core.config import CacheEngineConfig
    from lmcache_core.layout_registry import LayoutHints

    arrays, _ = tpu_kv(
        "tpu_inference", layers=2, blocks=1, block_size=4, heads=2, head_size=head_size, dtype=dtype, seed=0
    )
    config = CacheEngineConfig(model_id="m", l1_bytes=1 << 22, l2_urls=(f"fs://{tmp_path / 'l2'}",))
    backend = LMCacheCPUBackend(8, config=config)
    hints = LayoutHints(kind="tpu_inference", num_kv_heads=2, head_size=head_size, block_size=4, num_layers=2)
    backend.set_layout(hints, arrays[0].shape[1:], arrays[0].dtype)
    return backend


# ---- two hosts, one shared fs tier -----------------------------------------------------------

HOST = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    from lmcache_core.config import CacheEngineConfig
    from lmcache_core.layout_registry import LayoutHints
    from lmcache_tpu.testing import tpu_kv
    from lmcache_tpu.tpu_inference.host_backend import LMCacheCPUBackend, scheduler_engine

    mode, l2, dtype, head_size, pages_file, out = sys.argv[1:7]
    head_size = int(head_size)
    hints = LayoutHints(kind="tpu_inference", num_kv_heads=2, head_size=head_size, block_size=4, num_layers=2)
    config = CacheEngineConfig(model_id="m", l1_bytes=1 << 22, l2_urls=(f"fs://{l2}",))
    arrays, _ = tpu_kv("tpu_inference", layers=2, blocks=1, block_size=4, heads=2, head_size=head_size,
                       dtype=dtype, seed=0)
    kv_dtype = arrays[0].dtype
    tokens = list(range(500, 512))
    backend = LMCacheCPUBackend(16, config=config)
    backend.set_layout(hints, arrays[0].shape[1:], kv_dtype)
    bits = np.dtype(f"u{kv_dtype.itemsize}")
    if mode == "put":
        pages = np.load(pages_file).view(kv_dtype)  # [3, 1, L, ps, G, p, Dp]
        host = jax.sharding.SingleDeviceSharding(jax.devices()[0], memory_kind="pinned_host")
        for block, slot in enumerate([2, 0, 5]):  # slots as this host's scheduler gave them
            backend.bind(slot, tokens, 4 * (block + 1))
            value = jax.device_put(pages[block], host)
            assert value.sharding.memory_kind == "pinned_host"
            assert backend.add(slot, value)
        assert backend.num_saved_cpu_chunks == 3
        backend.close()
        print("put")
    else:
        found = scheduler_engine(config, hints, str(kv_dtype)).lookup(np.array(tokens)).tokens
        got = []
        for block, slot in enumerate([9, 4, 11]):  # other slots on this host
            backend.bind(slot, tokens, 4 * (block + 1))
            page = backend.get(slot)
            got.append(np.asarray(page).view(bits))
        backend.bind(1, tokens[:4] [::-1] + tokens[4:], 8)  # a prefix nobody stored
        miss = backend.get(1)
        backend.fill_misses = True
        filled = backend.get(1)
        np.save(out, np.stack(got))
        print(found, miss is None, not filled.view(bits).any(), sorted(backend.load_errors))
    """
)


def _host(tmp_path: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", HOST, *args], capture_output=True, text=True, timeout=300
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("dtype, head_size", [("bfloat16", 128), ("float8_e4m3fn", 64)])
def test_pages_put_on_one_host_are_got_bit_exact_on_another(
    tmp_path: Path, dtype: str, head_size: int
) -> None:
    rng = np.random.default_rng(head_size)
    pages, expected = [], []
    for _ in range(3):
        arrays, layout = tpu_kv(
            "tpu_inference", layers=2, blocks=1, block_size=4, heads=2, head_size=head_size, dtype=dtype,
            seed=int(rng.integers(1 << 30)),
        )  # fmt: skip
        slots = np.arange(4, dtype=np.int64)
        chunk = np.zeros(layout.chunk_format.shape(4), dtype=arrays[0].dtype)
        numpy_gather(layout, arrays, slots, chunk, 0)
        zeroed = [np.zeros_like(a) for a in arrays]
        numpy_scatter(layout, zeroed, slots, chunk, 0)  # the real channels, zero padding
        pages.append(np.stack(arrays, axis=1))  # [1, L, ps, G, p, Dp], padding random
        expected.append(bits(np.stack(zeroed, axis=1)))
    pages_file = tmp_path / "pages.npy"
    np.save(pages_file, bits(np.stack(pages)))
    l2, out = str(tmp_path / "l2"), str(tmp_path / "got.npy")
    assert _host(tmp_path, "put", l2, dtype, str(head_size), str(pages_file), out) == "put"
    assert _host(tmp_path, "get", l2, dtype, str(head_size), str(pages_file), out) == "12 True True [1]"
    assert np.array_equal(np.load(out), np.stack(expected))


def test_hybrid_lists_and_unbound_slots_are_refused(tmp_path: Path) -> None:
    backend = _backend(tmp_path, "float32", 128)
    with pytest.raises(KeyError, match="chunk_id 3: not bound"):
        backend.add(3, np.zeros(1))
    backend.bind(3, list(range(4)), 4)
    with pytest.raises(TypeError, match="value: expected one page array"):
        backend.add(3, [np.zeros(1)])
    with pytest.raises(ValueError, match="value: expected a float32 page of shape"):
        backend.add(3, np.zeros((1, 2, 4), np.float32))
    assert host_backend.INTERFACE[0] == "add"
    backend.close()
