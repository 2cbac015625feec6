"""Backend selection and kernel routing, end to end through the installed test plugins.

What is proved here, with real entry points and real kernels (tests/plugins/):

* automatic selection takes the highest-priority available backend serving the KV's device and
  falls back to the next one (the reference where no vendor plugin is installed and available);
  ``LMCACHE_BACKEND`` overrides it; ties and unknown names are errors
  that name the remedy or the valid names;
* a backend that fails (probe raises, plugin fails to import, wrong API version) is logged and
  skipped when chosen automatically, and is a loud error naming the reason when asked for by name;
* a loaded backend's kernels serve exactly the layouts its Capabilities cover, bit-exact with the
  reference, and every other layout is routed to the reference.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.selection import get_backend, select_backend
from lmcache_core.testing.require import import_module

lmcache_broken_probe = import_module(
    "lmcache_broken_probe.probe", "see tests/plugins/README.md", module_level=True
)  # skips the module, or fails it under CI=true
BROKEN_MESSAGE = lmcache_broken_probe.MESSAGE


@pytest.fixture
def dummy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    backend = get_backend("cpu")
    assert backend.name == "dummy"
    yield backend


TEST_BACKENDS = frozenset({"dummy", "dummy_twin", "dummy_badapi", "dummy_noimport", "broken_probe"})


def _best_real(device_type: str) -> str:
    """What automatic selection picks when no test backend is enabled: the top-priority available
    real backend serving ``device_type``. ``reference`` on a machine with no vendor plugin; another
    (e.g. lmcache-arm's ``arm``, priority 50, for "cpu") where one is installed and available."""
    from lmcache_core.discovery import discover_backends

    real = [d for d in discover_backends() if d.name not in TEST_BACKENDS and d.available]
    serving = [d for d in real if d.probe is not None and d.probe.serves(device_type)]
    return max(serving, key=lambda d: d.probe.priority if d.probe else -1).name


def _calls() -> dict[str, int]:
    from lmcache_dummy_backend.plugin import CALLS

    return dict(CALLS)


# ---- automatic selection --------------------------------------------------------------------


def test_auto_selects_the_best_real_backend_when_no_test_backend_is_enabled() -> None:
    selection = select_backend("cpu")
    assert selection.backend.name == _best_real("cpu")
    assert selection.backend.name not in TEST_BACKENDS
    assert {"dummy", "dummy_twin", "broken_probe", "reference"} <= {d.name for d in selection.found}


def test_auto_selects_the_enabled_dummy_over_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    selection = select_backend("cpu")
    assert selection.backend.name == "dummy"
    assert "1000" in selection.why and "'cpu'" in selection.why
    assert selection.backend.capabilities.layouts == frozenset({"vllm_flash_nhd"})


def test_device_the_dummy_does_not_serve_gets_another_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    assert get_backend("cuda").name == _best_real("cuda")  # "reference" unless a cuda plugin is here
    assert get_backend("cpu").name == "dummy"


def test_env_override_beats_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    monkeypatch.setenv("LMCACHE_BACKEND", "reference")
    selection = select_backend("cpu")
    assert selection.backend.name == "reference"
    assert "LMCACHE_BACKEND" in selection.why


def test_name_argument_beats_priority(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    assert get_backend("cpu", name="reference").name == "reference"


def test_tie_at_the_top_priority_is_an_error_naming_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_TWIN", "1")
    with pytest.raises(RuntimeError, match="LMCACHE_BACKEND") as info:
        select_backend("cpu")
    assert "dummy" in str(info.value) and "dummy_twin" in str(info.value)
    # the override settles the tie
    monkeypatch.setenv("LMCACHE_BACKEND", "dummy_twin")
    assert get_backend("cpu").name == "dummy_twin"


def test_backends_failing_to_load_are_logged_and_skipped_in_auto_mode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_BADAPI", "1")  # priority 3000, wrong API version
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_NOIMPORT", "1")  # priority 2000, import fails
    with caplog.at_level(logging.WARNING, logger="lmcache_core"):
        assert get_backend("cpu").name == "dummy"
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("dummy_badapi" in m and "(99, 0)" in m for m in messages), messages
    assert any("dummy_noimport" in m and "libdummy.so" in m for m in messages), messages
    assert any("broken_probe" in m and BROKEN_MESSAGE in m for m in messages), messages


def test_failing_backends_alone_fall_back_to_the_best_real_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    expected = _best_real("cpu")
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_BADAPI", "1")
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_NOIMPORT", "1")
    assert get_backend("cpu").name == expected


# ---- explicit requests are loud -------------------------------------------------------------


def test_unknown_name_lists_the_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_BACKEND", "no_such_backend")
    with pytest.raises(ValueError, match="no_such_backend") as info:
        select_backend("cpu")
    for name in ("reference", "dummy", "dummy_twin", "broken_probe"):
        assert repr(name) in str(info.value)


def test_requesting_the_broken_probe_raises_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_BACKEND", "broken_probe")
    with pytest.raises(RuntimeError) as info:
        select_backend("cpu")
    text = str(info.value)
    assert BROKEN_MESSAGE in text
    assert "lmcache-broken-probe" in text and "LMCACHE_BACKEND" in text


def test_requesting_a_disabled_dummy_raises_naming_its_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMCACHE_BACKEND", "dummy")
    with pytest.raises(RuntimeError, match="LMCACHE_TEST_DUMMY=1"):
        select_backend("cpu")


@pytest.mark.parametrize(
    ("name", "switch", "reason"),
    [
        ("dummy_badapi", "LMCACHE_TEST_DUMMY_BADAPI", "(99, 0)"),
        ("dummy_noimport", "LMCACHE_TEST_DUMMY_NOIMPORT", "libdummy.so"),
    ],
)
def test_requesting_a_backend_that_fails_to_load_raises_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, name: str, switch: str, reason: str
) -> None:
    monkeypatch.setenv(switch, "1")
    monkeypatch.setenv("LMCACHE_BACKEND", name)
    with pytest.raises(RuntimeError, match="failed to load") as info:
        select_backend("cpu")
    assert reason in str(info.value) and name in str(info.value)


def test_requesting_the_dummy_for_a_device_it_does_not_serve_is_a_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY", "1")
    with pytest.raises(ValueError, match="'cuda'"):
        select_backend("cuda", name="dummy")


# ---- in a fresh interpreter: the lazy current_backend and what gets imported ---------------


@pytest.mark.parametrize("enable", [True, False])
def test_current_backend_in_a_fresh_process(enable: bool) -> None:
    expected = "dummy" if enable else _best_real("cpu")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    if enable:
        env["LMCACHE_TEST_DUMMY"] = "1"
    code = (
        "import sys, lmcache_core\n"
        "print(lmcache_core.current_backend.name)\n"
        "print('lmcache_dummy_backend.plugin' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )
    name, plugin_imported = proc.stdout.split()
    assert name == expected
    # the dummy's kernel module is imported only when the dummy is the one chosen
    assert plugin_imported == str(enable)


# ---- kernel routing -------------------------------------------------------------------------

_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_INT[t.element_size()])


def _fill_random_(t: torch.Tensor, gen: torch.Generator) -> None:
    """Random bit patterns (NaN payloads included) into every element of ``t``."""
    bits = _bits(t)
    lo, hi = (
        (0, 256)
        if bits.dtype == torch.uint8
        else (-(2 ** (8 * t.element_size() - 1)), 2 ** (8 * t.element_size() - 1))
    )
    bits.copy_(torch.randint(lo, hi, bits.shape, dtype=torch.int64, generator=gen).to(bits.dtype))


def _example(kind: str, dtype: torch.dtype, physical_hnd: bool = False):
    heads = 1 if kind == "mla" else 2
    tensors, hints = allocate_example(
        kind,
        num_layers=3,
        num_blocks=6,
        block_size=4,
        num_kv_heads=heads,
        head_size=16,
        dtype=dtype,
        physical_hnd=physical_hnd,
    )
    gen = torch.Generator().manual_seed(7)
    for t in tensors:
        _fill_random_(t, gen)
    layout = detect_layout(tensors, hints)
    # 10 tokens over blocks 4, 1, 5 (consecutive slots inside each block); token 6 has no slot
    slots = torch.tensor([16, 17, 18, 19, 4, 5, -1, 7, 20, 21], dtype=torch.int64)
    return tensors, layout, slots, gen


DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).removeprefix("torch."))
@pytest.mark.parametrize("physical_hnd", [False, True], ids=["nhd_memory", "hnd_memory"])
@pytest.mark.parametrize("skip_prefix", [0, 3])
def test_dummy_kernels_serve_vllm_flash_nhd_bit_exact(
    dummy: Backend, dtype: torch.dtype, physical_hnd: bool, skip_prefix: int
) -> None:
    tensors, layout, slots, gen = _example("vllm_flash_nhd", dtype, physical_hnd)
    ref = reference_backend()
    assert dummy.kernel_name(layout) == "dummy" and dummy.handles(layout)

    shape = layout.chunk_format.shape(slots.numel())
    mine, theirs = torch.empty(shape, dtype=dtype), torch.empty(shape, dtype=dtype)
    _fill_random_(mine, gen)
    _bits(theirs).copy_(_bits(mine))  # same untouched rows in both
    before = _calls()
    dummy.gather(layout, tensors, slots, mine, skip_prefix=skip_prefix)
    ref.gather(layout, tensors, slots, theirs, skip_prefix=skip_prefix)
    assert _calls()["gather"] == before["gather"] + 1
    assert torch.equal(_bits(mine), _bits(theirs))

    src = torch.empty(shape, dtype=dtype)
    _fill_random_(src, gen)
    kv_mine = [t.clone() for t in tensors]
    kv_theirs = [t.clone() for t in tensors]
    dummy.scatter(layout, kv_mine, slots, src, skip_prefix=skip_prefix)
    ref.scatter(layout, kv_theirs, slots, src, skip_prefix=skip_prefix)
    assert _calls()["scatter"] == before["scatter"] + 1
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(kv_mine, kv_theirs, strict=True))
    assert not all(torch.equal(_bits(a), _bits(b)) for a, b in zip(kv_mine, tensors, strict=True))


@pytest.mark.parametrize("kind", ["vllm_flash_hnd", "flashinfer", "vllm_cpu", "mla", "trtllm"])
def test_other_layouts_are_routed_to_the_reference(dummy: Backend, kind: str) -> None:
    tensors, layout, slots, gen = _example(kind, torch.bfloat16)
    assert dummy.kernel_name(layout) == "reference" and not dummy.handles(layout)
    ref = reference_backend()

    shape = layout.chunk_format.shape(slots.numel())
    mine, theirs = torch.zeros(shape, dtype=torch.bfloat16), torch.zeros(shape, dtype=torch.bfloat16)
    before = _calls()
    dummy.gather(layout, tensors, slots, mine)
    ref.gather(layout, tensors, slots, theirs)
    assert torch.equal(_bits(mine), _bits(theirs))
    assert _bits(mine).any()  # real data moved, not two untouched buffers

    src = torch.empty(shape, dtype=torch.bfloat16)
    _fill_random_(src, gen)
    kv_mine = [t.clone() for t in tensors]
    kv_theirs = [t.clone() for t in tensors]
    dummy.scatter(layout, kv_mine, slots, src)
    ref.scatter(layout, kv_theirs, slots, src)
    assert all(torch.equal(_bits(a), _bits(b)) for a, b in zip(kv_mine, kv_theirs, strict=True))
    assert _calls() == before  # the dummy's kernels were not called


def test_a_backend_without_kernels_routes_everything_to_the_reference(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LMCACHE_TEST_DUMMY_TWIN", "1")
    twin = get_backend("cpu")
    assert twin.name == "dummy_twin"
    assert twin.capabilities.status == "test-only: no kernels of its own"
    tensors, layout, slots, _ = _example("vllm_flash_nhd", torch.bfloat16)
    assert twin.kernel_name(layout) == "reference"
    out, expected = (
        torch.zeros(layout.chunk_format.shape(slots.numel()), dtype=torch.bfloat16) for _ in range(2)
    )
    twin.gather(layout, tensors, slots, out)
    reference_backend().gather(layout, tensors, slots, expected)
    assert torch.equal(_bits(out), _bits(expected))
