"""Hook API versions (1.0, 1.1, 1.2), capabilities that need 1.2, and the functional scatter contract.

Plugins here are small classes registered through :class:`~lmcache_core.backend.Backend`, as an
installed plugin's module is; the installed numpy functional plugin is tested under tests/.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.hookspecs import hookimpl
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.plugin_api import (
    API_1_0,
    API_1_1,
    API_1_2,
    API_VERSION,
    BackendProbe,
    Capabilities,
    check_api_version,
    check_capabilities,
)
from lmcache_core.testing.numpy_oracle import numpy_like


def test_the_core_speaks_1_2_and_loads_1_0_and_1_1() -> None:
    assert API_VERSION == API_1_2 == (1, 2)
    for version in (API_1_0, API_1_1, API_1_2):
        check_api_version("p", version)


def test_a_too_old_plugin_is_told_to_port_to_this_api() -> None:
    with pytest.raises(ImportError) as e:
        check_api_version("old", (0, 9))
    msg = str(e.value)
    assert "backend 'old': built against lmcache-core backend API (0, 9), older than every version" in msg
    assert "supports backend API (1, 0) to (1, 2)" in msg
    assert "return lmcache_core.plugin_api.API_VERSION from lmcache_api_version" in msg


@pytest.mark.parametrize("version", [(1, 3), (2, 0)])
def test_a_newer_plugin_is_told_to_upgrade_the_core(version: tuple[int, int]) -> None:
    with pytest.raises(ImportError, match=r"newer than this core; .* Install a newer lmcache-core"):
        check_api_version("new", version)


@pytest.mark.parametrize("version", ["1.2", (1,), (True, 0), None])
def test_a_malformed_version_says_what_to_return(version: object) -> None:
    with pytest.raises(ImportError, match=r"expected a \(major, minor\) tuple of ints.*API_VERSION"):
        check_api_version("odd", version)


@pytest.mark.parametrize(
    ("caps", "named"),
    [
        (Capabilities(functional=True), "Capabilities.functional=True"),
        (Capabilities(arrays=frozenset({"numpy"})), "Capabilities.arrays=['numpy']"),
    ],
)
@pytest.mark.parametrize("version", [API_1_0, API_1_1])
def test_12_capabilities_from_an_older_plugin(
    caps: Capabilities, named: str, version: tuple[int, int]
) -> None:
    with pytest.raises(ImportError) as e:
        check_capabilities("p", version, caps)
    msg = str(e.value)
    assert named in msg and f"returns {version}" in msg
    assert "Return lmcache_core.plugin_api.API_1_2 (or API_VERSION) from lmcache_api_version" in msg
    check_capabilities("p", API_1_2, caps)  # what the message says fixes it


def test_unknown_array_family_lists_the_known_ones() -> None:
    with pytest.raises(
        ImportError,
        match=r"Capabilities.arrays: expected a non-empty subset of \['torch', 'numpy', 'jax'\], given \['cupy'\]",
    ):
        check_capabilities("p", API_1_2, Capabilities(arrays=frozenset({"cupy"})))


def test_jax_arrays_need_a_functional_backend() -> None:
    with pytest.raises(ImportError, match=r"JAX arrays are immutable.*set Capabilities\(functional=True\)"):
        check_capabilities("tpu", API_1_2, Capabilities(arrays=frozenset({"jax"})))
    check_capabilities("tpu", API_1_2, Capabilities(arrays=frozenset({"jax"}), functional=True))


def test_probe_serves_device_and_array_family() -> None:
    torch_only = BackendProbe(True, "ok", device_types=("cpu",))
    assert torch_only.serves("cpu") and not torch_only.serves("cpu", "numpy")
    host_numpy = BackendProbe(True, "ok", device_types=("cpu",), array_types=("numpy",))
    assert (
        host_numpy.serves("cpu", "numpy")
        and not host_numpy.serves("cpu")
        and not host_numpy.serves("tpu", "numpy")
    )


# ---- plugins as a Backend loads them --------------------------------------------------------


class _Old11Functional:
    """A 1.1 plugin that declares functional: refused at load with the remedy."""

    @staticmethod
    @hookimpl
    def lmcache_api_version() -> tuple[int, int]:
        return API_1_1

    @staticmethod
    @hookimpl
    def lmcache_capabilities() -> Capabilities:
        return Capabilities(functional=True, arrays=frozenset({"numpy"}))


class _Plain10:
    """A 1.0 plugin with no capabilities: still loads, moves torch tensors in place."""

    @staticmethod
    @hookimpl
    def lmcache_api_version() -> tuple[int, int]:
        return API_1_0


def test_backend_load_refuses_a_11_functional_plugin_and_loads_a_10_one() -> None:
    with pytest.raises(ImportError, match=r"backend 'old'.*Return lmcache_core.plugin_api.API_1_2"):
        Backend("old", _Old11Functional(), reference=reference_backend())
    plain = Backend("plain", _Plain10(), reference=reference_backend())
    assert not plain.functional


def _numpy_nhd(physical_hnd: bool = False) -> tuple[list[np.ndarray], KVLayout]:
    kv, hints = allocate_example(
        "vllm_flash_nhd",
        num_layers=2,
        num_blocks=3,
        block_size=2,
        num_kv_heads=2,
        head_size=4,
        dtype=torch.float32,
        physical_hnd=physical_hnd,
    )
    for t in kv:
        t.zero_()
    return [numpy_like(t) for t in kv], detect_layout(kv, hints)


class _Functional:
    """A functional numpy backend whose scatter returns whatever :attr:`result` makes of its input."""

    def __init__(self, result: Any) -> None:
        self.result = result

    @hookimpl
    def lmcache_api_version(self) -> tuple[int, int]:
        return API_1_2

    @hookimpl
    def lmcache_capabilities(self) -> Capabilities:
        return Capabilities(arrays=frozenset({"numpy"}), functional=True)

    @hookimpl
    def lmcache_gather(
        self,
        layout: KVLayout,
        kv_caches: Sequence[Any],
        slot_mapping: Any,
        out: Any,
        skip_prefix: int,
        stream: int,
    ) -> None:
        return None

    @hookimpl
    def lmcache_scatter(
        self,
        layout: KVLayout,
        kv_caches: Sequence[Any],
        slot_mapping: Any,
        src: Any,
        skip_prefix: int,
        stream: int,
    ) -> Any:
        return self.result(kv_caches)


def _scatter(backend: Backend, kv: list[np.ndarray], layout: KVLayout) -> list[Any]:
    src = np.zeros((2, 2, 1, 8), np.float32)
    return backend.scatter(layout, kv, np.array([3], np.int64), src)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        (lambda kv: None, r"returned NoneType, expected a list of 2 KV arrays"),
        (lambda kv: kv[:1], r"returned 1 arrays, expected a list of 2"),
        (lambda kv: [torch.zeros(1), kv[1]], r"returned torch.Tensor at \[0\], expected numpy.ndarray"),
        (
            lambda kv: [kv[0][:1], kv[1]],
            r"returned an array at \[0\] with \(shape, strides, dtype, device\) \(\(1, 3",
        ),
        (
            lambda kv: [kv[0].astype(np.float16), kv[1]],
            r"returned an array at \[0\] .*'float16'.*expected .*'float32'",
        ),
    ],
)
def test_functional_results_are_checked(result: Any, message: str) -> None:
    kv, layout = _numpy_nhd()
    backend = Backend("f", _Functional(result), reference=reference_backend())
    with pytest.raises(RuntimeError, match=rf"backend 'f': lmcache_scatter \(functional\) {message}"):
        _scatter(backend, kv, layout)


def test_a_contiguous_copy_of_a_permuted_array_is_refused() -> None:
    """np.copy makes HND-memory views contiguous: the layout's strides would no longer describe it."""
    kv, layout = _numpy_nhd(physical_hnd=True)
    backend = Backend("f", _Functional(lambda kv: [a.copy() for a in kv]), reference=reference_backend())
    with pytest.raises(RuntimeError, match=r"the layout must still describe it"):
        _scatter(backend, kv, layout)


def test_functional_result_is_returned() -> None:
    kv, layout = _numpy_nhd()
    fresh = [np.ones_like(a) for a in kv]
    backend = Backend("f", _Functional(lambda _: fresh), reference=reference_backend())
    assert backend.functional
    out = _scatter(backend, kv, layout)
    assert out == fresh and all(a is b for a, b in zip(out, fresh, strict=True))


def test_numpy_kv_on_a_torch_only_backend_is_a_type_error() -> None:
    kv, layout = _numpy_nhd()
    with pytest.raises(TypeError, match=r"kv_caches: backend 'reference' has no kernels for numpy arrays"):
        _scatter(reference_backend(), kv, layout)


def test_in_place_scatter_into_read_only_numpy_kv_is_refused() -> None:
    class InPlace(_Functional):
        @hookimpl
        def lmcache_capabilities(self) -> Capabilities:
            return Capabilities(arrays=frozenset({"numpy"}))

    kv, layout = _numpy_nhd()
    kv[1].setflags(write=False)
    backend = Backend("i", InPlace(lambda kv: None), reference=reference_backend())
    with pytest.raises(
        ValueError, match=r"kv_caches\[1\]: expected a writable array \(backend 'i' writes the KV in place\)"
    ):
        _scatter(backend, kv, layout)
    kv[1].setflags(write=True)
    assert _scatter(backend, kv, layout) == kv  # in place: the same arrays come back
