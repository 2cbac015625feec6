"""The conformance suite run on the reference backend, and the reference checked against a naive oracle.

The suite compares a backend with the reference, so on the reference itself it proves the suite's
plumbing and the contract checks (poison, no stray writes, round trip). What proves the reference
right is :class:`TestReferenceAgainstNaiveOracle`: a per-token Python loop that addresses every
element through each layout's documented tensor shape (the tensors' own indexing, never the
KVLayout strides).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lmcache_core import discovery
from lmcache_core.backend import reference_backend
from lmcache_core.layout_registry import LAYOUT_KINDS
from lmcache_core.plugin_api import BackendProbe
from lmcache_core.testing import LAYOUT_VARIANTS, Case, ConformanceSuite, make_cases
from lmcache_core.testing.cases import bits, float_dtypes, poison_
from lmcache_core.testing.plugin import seed_and_cases

pytest_plugins = ["lmcache_core.testing", "pytester"]


class TestReferenceConformance(ConformanceSuite):
    backend_name = "reference"
    device = "cpu"


# ---- the naive oracle ------------------------------------------------------------------------


Row = tuple[torch.Tensor, tuple[Any, ...]]


def _packed(region: torch.Tensor, offsets: list[int]) -> Row:
    """Token row of a tiled (block, head) region ``[heads, region elements]``: channel c at
    ``offsets[c]`` (read with ``view[idx]``, written with ``view[idx] = row``)."""
    return region, (slice(None), torch.tensor(offsets))


def token_row(case: Case, kv: list[torch.Tensor], kind: int, layer: int, slot: int) -> Row:
    """``(view, idx)``: ``view[idx]`` is the ``[heads, width]`` (``[width]`` for one-head kinds)
    row of one token of one plane, as the engine's own tensors index it.

    Written from the layout table of :mod:`lmcache_core.layout_registry` and the engines' kernel
    sources (vLLM CPU tiles, TPU packing), by tensor indexing: never the KVLayout strides.
    """
    block, tok = divmod(slot, case.block_size)
    L, nb, h, bs, d = case.num_layers, case.num_blocks, case.num_kv_heads, case.block_size, case.head_size
    whole = (...,)
    if case.kind == "vllm_flash_nhd":  # [2, num_blocks, block_size, heads, head_size] per layer
        return kv[layer][kind, block, tok], whole
    if case.kind == "vllm_flash_hnd":  # [2, num_blocks, heads, block_size, head_size] per layer
        return kv[layer][kind, block, :, tok], whole
    if case.kind == "flashinfer":  # [num_blocks, 2, block_size, heads, head_size] per layer
        return kv[layer][block, kind, tok], whole
    if case.kind == "vllm_cpu":  # per (block, head): K [head_size, block_size] (transposed), V rows
        if kind == 0:
            return kv[layer].view(nb, h, 2, d, bs)[block, :, 0, :, tok], whole
        return kv[layer].view(nb, h, 2, bs, d)[block, :, 1, tok], whole
    if (
        case.kind == "vllm_cpu_amx"
    ):  # 16-token tiles of channel words (K), 16-channel tiles of token words (V)
        p = 4 // case.dtype.itemsize if case.dtype.itemsize in (2, 4) else 2
        region = kv[layer].view(nb, h, 2, bs * d)[block, :, kind]
        if kind == 0:
            return _packed(
                region, [(tok // 16) * 16 * d + (c // p) * 16 * p + (tok % 16) * p + c % p for c in range(d)]
            )
        return _packed(
            region, [(c // 16) * 16 * bs + (tok // p) * 16 * p + (c % 16) * p + tok % p for c in range(d)]
        )
    if case.kind == "vllm_cpu_bfmmla":  # cpu_attn_neon_bfmmla.hpp reshape_and_cache
        region = kv[layer].view(nb, h, 2, bs * d)[block, :, kind]
        t = tok
        if kind == 0:
            return _packed(
                region,
                [
                    (t // 8) * 8 * d + (c // 4) * 32 + ((t % 8) // 2) * 8 + (t % 2) * 4 + c % 4
                    for c in range(d)
                ],
            )
        return _packed(region, [(c // 2) * 2 * bs + (t // 4) * 8 + (c % 2) * 4 + t % 4 for c in range(d)])
    if case.kind in ("mla", "tpu_inference_mla"):  # [num_blocks, block_size, latent] per layer, one plane
        assert kind == 0
        if case.kind == "mla":
            return kv[layer][block, tok], whole
        if case.variant == "transposed":  # [num_blocks, kv_dim, block_size]
            return kv[layer][block, :, tok], whole
        lanes = kv[layer].shape[-1]  # [num_blocks, ceil(bs / p), p, align(kv_dim, 128)]
        return kv[layer][block].reshape(-1, lanes)[tok, :d], whole
    if case.kind == "sglang":  # 2L tensors [num_slots, heads, head_size]: K of each layer, then V
        return kv[kind * L + layer][slot], whole
    if case.kind == "trtllm":  # one tensor [num_blocks, layers, 2, heads, block_size, head_size]
        return kv[0][block, layer, kind, :, tok], whole
    if case.kind in ("vllm_ascend", "vllm_ascend_mla"):  # per layer a tuple (K, V[, indexer]) [nb, bs, h, w]
        n = len(kv) // L
        return kv[layer * n + kind][block, tok], whole
    if case.kind == "sglang_npu":  # [K, V(, indexer)], each [layers, num_blocks, block_size, heads, w]
        return kv[kind][layer, block, tok], whole
    if case.kind == "tpu_inference":  # [nb, bs, ceil(2h / p), p, align(d, 128)] per layer
        row = kv[layer][block, tok]
        if d == 64:  # head j's 128 lanes are [K | V]
            return row.reshape(-1, 128)[:h, 64 * kind : 64 * kind + 64], whole
        return row.reshape(-1, row.shape[-1])[kind : 2 * h : 2, :d], whole  # combined head 2j + kind
    raise AssertionError(f"oracle has no rule for {case.kind}")


def _sections(case: Case, chunk: torch.Tensor) -> list[torch.Tensor]:
    """``[num_layers, num_tokens, hidden_k]`` bit views of each section of ``chunk``."""
    if chunk.dim() == 4:
        return [bits(chunk)[k] for k in range(chunk.shape[0])]
    return [bits(v) for v in case.chunk_format().views(chunk, case.num_tokens)]


def oracle_gather(case: Case, kv: list[torch.Tensor], out: torch.Tensor) -> None:
    bkv = [bits(t) for t in kv]
    sections = _sections(case, out)
    for t in case.live_tokens():
        for kind, section in enumerate(sections):
            for layer in range(case.num_layers):
                view, idx = token_row(case, bkv, kind, layer, case.slot_mapping[t])
                section[layer, t] = view[idx].reshape(-1)


def oracle_scatter(case: Case, kv: list[torch.Tensor], src: torch.Tensor, slots: list[int]) -> None:
    bkv = [bits(t) for t in kv]
    sections = _sections(case, src)
    for t in case.live_tokens():
        if slots[t] == -1:
            continue
        for kind, section in enumerate(sections):
            for layer in range(case.num_layers):
                view, idx = token_row(case, bkv, kind, layer, slots[t])
                view[idx] = section[layer, t].reshape(view[idx].shape)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The oracle checks the same seeded cases as the suite: sweep seeds with the suite's options."""
    if "oracle_case" in metafunc.fixturenames:
        seed, count = seed_and_cases(metafunc.config)
        cases = make_cases(seed, count)
        metafunc.parametrize("oracle_case", cases, ids=[c.id for c in cases])


@pytest.mark.parametrize("seed", [0, 1, 2, 12345])
def test_every_seed_covers_every_feature(seed: int) -> None:
    """Six cases per layout reach every dtype, slot pattern and skip mode; sizes reach the edges."""
    cases = make_cases(seed, 6)
    assert {(c.kind, c.physical_hnd) for c in cases} == {(v.kind, v.physical_hnd) for v in LAYOUT_VARIANTS}
    assert {v.kind for v in LAYOUT_VARIANTS} == set(LAYOUT_KINDS)
    for variant in LAYOUT_VARIANTS:
        mine = [c for c in cases if c.label.startswith(variant.name + "-")]
        assert len(mine) == 6, variant
        assert {c.variant for c in mine} == {variant.variant}, variant
        assert all((c.head_size_v is not None) == variant.unequal_v for c in mine), variant
        if variant.kind in ("vllm_cpu_amx", "vllm_cpu_bfmmla"):  # tiles: sizes and dtypes of their own
            assert all(c.block_size % 8 == 0 and c.head_size % 4 == 0 for c in mine), variant
            continue
        assert {c.dtype for c in mine} == set(float_dtypes()), variant
        assert {c.pattern for c in mine} == {"runs", "distinct", "holes", "all_skipped", "repeats"}, variant
        assert any(c.skip_prefix == 0 for c in mine), variant
        assert any(0 < c.skip_prefix < c.num_tokens for c in mine), variant
        assert any(c.skip_prefix == c.num_tokens for c in mine), variant
        assert any(c.block_size == 1 for c in mine), variant
        if variant.kind == "mla":
            assert any(c.head_size == 576 and c.num_kv_heads == 1 for c in mine)
        elif LAYOUT_KINDS[variant.kind].mla or variant.variant == "mla":
            assert all(c.num_kv_heads == 1 for c in mine)
        else:
            assert {1, 3, 65} <= {c.head_size for c in mine} and any(c.num_kv_heads > 1 for c in mine)
    assert float_dtypes()[:3] == (torch.float16, torch.bfloat16, torch.float32)


class TestReferenceAgainstNaiveOracle:
    def test_gather(self, oracle_case: Case) -> None:
        case = oracle_case
        kv, layout = case.random_kv()
        slots = case.slot_tensor()
        got = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
        reference_backend().gather(layout, kv, slots, got, case.skip_prefix)
        want = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
        oracle_gather(case, kv, want)
        assert torch.equal(bits(got), bits(want)), case.describe()

    def test_scatter(self, oracle_case: Case) -> None:
        case = oracle_case
        kv, layout = case.poisoned_kv()
        want_kv, _ = case.poisoned_kv()
        slots = case.slot_tensor(unique=True)
        src = case.random_chunk()
        reference_backend().scatter(layout, kv, slots, src, case.skip_prefix)
        oracle_scatter(case, want_kv, src, slots.tolist())
        for got_t, want_t in zip(kv, want_kv, strict=True):
            assert torch.equal(bits(got_t), bits(want_t)), case.describe()


def test_oracle_sees_vllm_cpu_k_transposed_then_v_rows() -> None:
    """Pin the oracle itself on a hand-built vllm_cpu block: head memory is K as [head_size,
    block_size] (transposed), then V as token rows."""
    case = Case("vllm_cpu", False, 1, 1, 2, 1, 2, torch.float32, (1,), 0, "runs", 0, "hand")
    kv, layout = case.random_kv()
    kv[0].copy_(torch.arange(8, dtype=torch.float32).view(1, 1, 2, 4))  # memory 0..7
    out = torch.zeros(case.chunk_shape(), dtype=torch.float32)
    oracle_gather(case, kv, out)
    # memory [K c0 (tok0, tok1), K c1 (tok0, tok1), V tok0, V tok1]: K of token 1 = 1,3; V = 6,7
    assert out.flatten().tolist() == [1.0, 3.0, 6.0, 7.0]
    ref = torch.zeros_like(out)
    reference_backend().gather(layout, kv, case.slot_tensor(), ref, 0)
    assert torch.equal(ref, out)


def test_variants_include_hnd_memory_view() -> None:
    hnd = [v for v in LAYOUT_VARIANTS if v.physical_hnd]
    assert [v.kind for v in hnd] == ["vllm_flash_nhd"]
    cases = [c for c in make_cases(0, 6) if c.physical_hnd and c.block_size > 1 and c.num_kv_heads > 1]
    assert cases
    kv, layout = cases[0].random_kv()
    assert not kv[0].is_contiguous()  # an NHD-shaped view of HND memory
    assert (layout.kind, layout.head_stride) == ("vllm_flash_nhd", cases[0].block_size * cases[0].head_size)


# ---- the suite catches broken backends and skips the ones that cannot run --------------------

BROKEN_BACKEND = """
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.backends import reference
from lmcache_core.hookspecs import hookimpl
from lmcache_core.plugin_api import API_VERSION, Capabilities


class Plugin:
    \"\"\"The reference kernels plus one deliberate bug.\"\"\"

    def __init__(self, bug, layouts=frozenset({"*"})):
        self.bug, self.layouts = bug, layouts

    @hookimpl
    def lmcache_api_version(self):
        return API_VERSION

    @hookimpl
    def lmcache_capabilities(self):
        return Capabilities(layouts=self.layouts, status="test double")

    @hookimpl
    def lmcache_gather(self, layout, kv_caches, slot_mapping, out, skip_prefix, stream):
        reference.lmcache_gather(layout, kv_caches, slot_mapping, out, skip_prefix, stream)
        live = [t for t in range(skip_prefix, out.shape[2]) if int(slot_mapping[t]) >= 0]
        if self.bug == "flip_bit" and live:
            row = out[0, 0, live[0]].view(torch.uint8)
            row[0] ^= 1
        if self.bug == "write_skipped_row" and len(live) < out.shape[2]:
            dead = next(t for t in range(out.shape[2]) if t not in live)
            out[:, :, dead].view(torch.uint8).zero_()
        return True

    @hookimpl
    def lmcache_scatter(self, layout, kv_caches, slot_mapping, src, skip_prefix, stream):
        reference.lmcache_scatter(layout, kv_caches, slot_mapping, src, skip_prefix, stream)
        if self.bug == "stray_write":
            t = reference.as_bits(kv_caches[-1])
            t[(-1,) * t.dim()] = 0
        return True


def make(bug, layouts=frozenset({"*"})):
    return Backend("broken_" + bug, Plugin(bug, layouts), reference=reference_backend())
"""


def _run_suite(pytester: pytest.Pytester, body: str) -> pytest.RunResult:
    pytester.makepyfile(broken_backend=BROKEN_BACKEND)
    pytester.syspathinsert()
    pytester.makepyfile(
        test_inner="from lmcache_core.testing import ConformanceSuite\n"
        "from broken_backend import make\n\n" + body
    )
    return pytester.runpytest_inprocess(
        "-p",
        "lmcache_core.testing",
        "--lmcache-conformance-cases=3",
        "--lmcache-conformance-seed=5",
        "-rfs",
        "-p",
        "no:cacheprovider",
    )


class TestSuiteJudgesBackends:
    @pytest.mark.parametrize(
        ("bug", "failing"),
        [
            ("flip_bit", ["test_gather_matches_reference", "test_round_trip", "test_layer_groups"]),
            ("write_skipped_row", ["test_gather_matches_reference"]),
            ("stray_write", ["test_scatter_matches_reference"]),
        ],
    )
    def test_a_bug_fails_the_suite(self, pytester: pytest.Pytester, bug: str, failing: list[str]) -> None:
        result = _run_suite(
            pytester,
            f"class TestBrokenConformance(ConformanceSuite):\n"
            f"    def make_backend(self):\n        return make({bug!r})\n",
        )
        outcomes = result.parseoutcomes()
        assert outcomes.get("failed", 0) > 0, result.stdout.str()[-3000:]
        text = result.stdout.str()
        for name in failing:
            assert f"::{name}[" in text, f"{name} did not fail for {bug}"
        assert "seed=5" in text
        assert "differ from the reference" in text and "reproduce: pytest -p lmcache_core.testing" in text

    def test_uncovered_layouts_are_skipped_with_the_reason(self, pytester: pytest.Pytester) -> None:
        body = (
            "class TestPartialConformance(ConformanceSuite):\n"
            "    def make_backend(self):\n"
            "        return make('none', frozenset({'vllm_flash_nhd'}))\n"
        )
        result = _run_suite(pytester, body)
        outcomes = result.parseoutcomes()
        assert outcomes.get("failed", 0) == 0 and outcomes["passed"] > 0 and outcomes["skipped"] > 0
        assert "does not cover layout trtllm" in result.stdout.str()
        assert "the core sends these calls to 'reference'" in result.stdout.str()

    def test_unavailable_backend_skips_with_probe_reason(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real = discovery.discover_backends

        def with_unavailable() -> list[discovery.DiscoveredBackend]:
            probe = BackendProbe(available=False, reason="no NPU driver found (test probe)")
            return [*real(), discovery.DiscoveredBackend("faraway", "faraway.probe:probe", None, probe)]

        monkeypatch.setattr(discovery, "discover_backends", with_unavailable)
        body = 'class TestFarawayConformance(ConformanceSuite):\n    backend_name = "faraway"\n'
        result = _run_suite(pytester, body)
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) == 0 and outcomes.get("failed", 0) == 0 and outcomes["skipped"] > 0
        assert (
            "backend 'faraway' cannot run on this host: no NPU driver found (test probe)"
            in result.stdout.str()
        )

    def test_unusable_device_skips(self, pytester: pytest.Pytester) -> None:
        body = (
            "class TestFarDeviceConformance(ConformanceSuite):\n"
            "    backend_name = 'reference'\n    device = 'cuda:99'\n"
        )
        result = _run_suite(pytester, body)
        outcomes = result.parseoutcomes()
        assert outcomes.get("passed", 0) == 0 and outcomes.get("failed", 0) == 0 and outcomes["skipped"] > 0
        assert "device 'cuda:99' is not usable on this host" in result.stdout.str()

    def test_unknown_backend_name_fails_loudly(self, pytester: pytest.Pytester) -> None:
        body = 'class TestTypoConformance(ConformanceSuite):\n    backend_name = "refrence"\n'
        result = _run_suite(pytester, body)
        assert result.parseoutcomes().get("errors", 0) > 0
        assert "given 'refrence'" in result.stdout.str()
