"""Conformance for backends that move numpy or JAX KV arrays, in place or functionally; numpy is the oracle.

Subclass :class:`NumpyConformanceSuite` in a ``Test*`` class and set :attr:`backend_name` (or
override ``make_backend``). For another array family set :attr:`array_type` and override
:meth:`~NumpyConformanceSuite.to_family` / :meth:`~NumpyConformanceSuite.to_numpy` (lmcache-tpu
does for JAX arrays: ``jnp.asarray`` of the numpy engine arrays, on JAX's CPU backend or a TPU). Cases are the torch suite's (:func:`~lmcache_core.testing.cases.make_cases`:
every layout variant, slot patterns, skip modes, random bits with NaN payloads), turned into numpy
engine arrays with the same storage, offsets and strides (:func:`numpy_like`); dtypes this numpy
has no name for (bfloat16 and fp8 without ``ml_dtypes``) are left out, and layouts outside the
backend's Capabilities are skipped. Each test compares the backend with
:mod:`lmcache_core.testing.numpy_oracle` bit for bit, on poisoned outputs:

* gather into a numpy chunk and into a host torch chunk (the core's L1 buffers) equals the oracle,
  leaves skipped rows poisoned and the KV untouched;
* scatter equals the oracle over the whole KV; a functional backend returns new arrays and leaves
  its inputs untouched (or donated: a deleted JAX array), an in-place one returns its inputs, written;
* gather -> scatter -> gather (through the returned arrays) reproduces the chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import pytest
import torch

from lmcache_core.arrays import array_info
from lmcache_core.backend import Backend
from lmcache_core.layout import KVLayout
from lmcache_core.testing.cases import LAYOUT_VARIANTS, POISON_BYTE, Case, LayoutVariant, make_cases
from lmcache_core.testing.numpy_oracle import copy_like, numpy_dtype, numpy_gather, numpy_like, numpy_scatter
from lmcache_core.testing.plugin import USED, seed_and_cases


def assert_same_bytes(actual: np.ndarray, expected: np.ndarray, what: str, context: str = "") -> None:
    """Fail unless two numpy arrays hold the same elements bit for bit; locate the first difference."""
    __tracebackhide__ = True
    if actual.shape != expected.shape or actual.dtype.itemsize != expected.dtype.itemsize:
        raise AssertionError(
            f"{what}: {actual.shape} {actual.dtype}, oracle {expected.shape} {expected.dtype}\n{context}"
        )
    bits = np.dtype(f"u{actual.dtype.itemsize}")
    a, e = actual.view(bits), expected.view(bits)
    diff = a != e
    if diff.any():
        first = tuple(int(i) for i in np.argwhere(diff)[0])
        raise AssertionError(
            f"{what}: {int(diff.sum())} of {a.size} elements differ from the numpy oracle; first at "
            f"{first}: bits {int(a[first]):#x}, oracle {int(e[first]):#x}\n{context}"
        )


def _poisoned(shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    out = np.empty(shape, dtype=dtype)
    out.view(np.uint8).fill(POISON_BYTE)
    return out


def _donated(a: Any) -> bool:
    """True for a JAX array whose buffer was donated (deleted) to a computation."""
    is_deleted = getattr(a, "is_deleted", None)
    return bool(is_deleted()) if callable(is_deleted) else False


class NumpyConformanceSuite:
    """Base class of a numpy-array backend's conformance tests; subclass it in a ``Test*`` class."""

    #: Entry-point name of the backend under test.
    backend_name: ClassVar[str] = ""
    #: Array family of the engine arrays (:mod:`lmcache_core.arrays`): ``"numpy"`` or ``"jax"``.
    array_type: ClassVar[str] = "numpy"
    #: Device type the engine arrays live on (what backend selection is asked for).
    device_type: ClassVar[str] = "cpu"
    #: Layout variants cases are drawn for (default: every registry variant).
    layout_variants: ClassVar[Sequence[LayoutVariant]] = LAYOUT_VARIANTS

    def make_backend(self) -> Backend:
        """The backend under test; default: ``get_backend(device_type, backend_name, array_type)``."""
        from lmcache_core.selection import get_backend

        if not self.backend_name:
            raise pytest.UsageError(f"{type(self).__name__}: set backend_name or override make_backend()")
        return get_backend(self.device_type, name=self.backend_name, array_type=self.array_type)

    def to_family(self, a: np.ndarray) -> Any:
        """A numpy engine array as an array of :attr:`array_type` (default: itself)."""
        return a

    def to_numpy(self, a: Any) -> np.ndarray:
        """An engine array of :attr:`array_type` as numpy, strides kept (default: itself)."""
        return np.asarray(a)

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        if "numpy_case" not in metafunc.fixturenames:
            return
        seed, count = seed_and_cases(metafunc.config)
        metafunc.config.stash[USED] = True
        cases = [
            c for c in make_cases(seed, count, self.layout_variants) if numpy_dtype(c.dtype_name) is not None
        ]
        metafunc.parametrize("numpy_case", cases, ids=[c.id for c in cases])

    @pytest.fixture(scope="class")
    @classmethod
    def numpy_backend(cls) -> Backend:
        return cls().make_backend()

    # ---- helpers ------------------------------------------------------------------------------

    def _arrays(self, case: Case, poisoned: bool) -> tuple[list[Any], KVLayout]:
        """The case's engine arrays in :attr:`array_type` (the flat list backends take)."""
        kv, layout = case.poisoned_kv() if poisoned else case.random_kv()
        return [self.to_family(numpy_like(t)) for t in kv], layout

    def _require(self, backend: Backend, case: Case) -> None:
        """Skip, before any array is built, what the backend's Capabilities leave out."""
        if not backend.capabilities.covers(case.kind, case.dtype_name, self.array_type):
            pytest.skip(
                f"backend {backend.name!r} does not move {self.array_type} arrays of {case.kind} in "
                f"{case.dtype_name}"
            )

    @staticmethod
    def _slots(case: Case, unique: bool = False) -> np.ndarray:
        return case.slot_tensor(unique=unique).numpy().copy()

    @staticmethod
    def _chunk_dtype(case: Case) -> np.dtype[Any]:
        dtype = numpy_dtype(str(case.chunk_dtype).removeprefix("torch."))
        assert dtype is not None
        return dtype

    # ---- tests --------------------------------------------------------------------------------

    def test_numpy_layout_detected_from_arrays(self, numpy_backend: Backend, numpy_case: Case) -> None:
        """The layout detected from numpy arrays (through metadata twins) is the torch one."""
        from lmcache_core.arrays import torch_twins

        self._require(numpy_backend, numpy_case)
        kv, layout = self._arrays(numpy_case, poisoned=False)
        assert numpy_case.detect(torch_twins(kv)) == layout

    @pytest.mark.parametrize("chunk_kind", ["numpy", "torch"])
    def test_numpy_gather_matches_oracle(
        self, numpy_backend: Backend, numpy_case: Case, chunk_kind: str
    ) -> None:
        case, ctx = numpy_case, numpy_case.describe()
        self._require(numpy_backend, case)
        kv, layout = self._arrays(case, poisoned=False)
        before = [copy_like(self.to_numpy(a)) for a in kv]
        slots = self._slots(case)
        dtype = self._chunk_dtype(case)
        shape = case.chunk_shape()
        if chunk_kind == "numpy":
            out: Any = _poisoned(shape, dtype)
        else:  # a typed view of a host torch byte buffer, as the CacheEngine's L1 chunks are
            raw = torch.full((int(np.prod(shape)) * dtype.itemsize,), POISON_BYTE, dtype=torch.uint8)
            out = raw.view(case.chunk_dtype).view(shape)
        numpy_backend.gather(layout, kv, slots, out, case.skip_prefix)
        got = out if chunk_kind == "numpy" else raw.numpy().view(dtype).reshape(shape)
        expected = _poisoned(shape, dtype)
        numpy_gather(layout, before, slots, expected, case.skip_prefix)
        assert_same_bytes(got, expected, f"gather out ({case.kind}, {chunk_kind} chunk)", ctx)
        for i, (a, b) in enumerate(zip(kv, before, strict=True)):
            assert_same_bytes(
                self.to_numpy(a), b, f"kv_caches[{i}] after gather (gather must not write KV)", ctx
            )

    def test_numpy_scatter_matches_oracle(self, numpy_backend: Backend, numpy_case: Case) -> None:
        case, ctx = numpy_case, numpy_case.describe()
        self._require(numpy_backend, case)
        kv, layout = self._arrays(case, poisoned=True)
        slots = self._slots(case, unique=True)
        src = numpy_like(case.random_chunk())
        src_before = src.copy()
        expected = [copy_like(self.to_numpy(a)) for a in kv]
        numpy_scatter(layout, expected, slots, src, case.skip_prefix)
        result = numpy_backend.scatter(layout, kv, slots, src, case.skip_prefix)
        assert len(result) == len(kv), f"scatter returned {len(result)} arrays for {len(kv)}"
        for i, (a, e) in enumerate(zip(result, expected, strict=True)):
            assert_same_bytes(self.to_numpy(a), e, f"kv_caches[{i}] after scatter ({case.kind})", ctx)
        if numpy_backend.functional:
            poison = np.frombuffer(bytes([POISON_BYTE]), np.uint8)[0]
            for i, (old, new) in enumerate(zip(kv, result, strict=True)):
                if _donated(old):  # a JAX backend may donate its inputs' buffers to the update
                    continue
                if not array_info(old, "kv_caches").writable:  # immutable (JAX): may come back as is
                    continue
                assert new is not old, f"functional scatter returned its input kv_caches[{i}]\n{ctx}"
                assert bool((self.to_numpy(old).view(np.uint8) == poison).all()), (
                    f"functional scatter wrote kv_caches[{i}]\n{ctx}"
                )
        else:
            assert all(new is old for new, old in zip(result, kv, strict=True)), (
                "in-place scatter: inputs back"
            )
        assert_same_bytes(src, src_before, "src after scatter (scatter must not write its source)", ctx)

    def test_numpy_round_trip(self, numpy_backend: Backend, numpy_case: Case) -> None:
        case, ctx = numpy_case, numpy_case.describe()
        self._require(numpy_backend, case)
        kv, layout = self._arrays(case, poisoned=False)
        slots = self._slots(case, unique=True)
        dtype = self._chunk_dtype(case)
        chunk = _poisoned(case.chunk_shape(), dtype)
        numpy_backend.gather(layout, kv, slots, chunk, case.skip_prefix)
        fresh, _ = self._arrays(case, poisoned=True)
        loaded: Sequence[Any] = numpy_backend.scatter(layout, fresh, slots, chunk, case.skip_prefix)
        again = _poisoned(case.chunk_shape(), dtype)
        numpy_backend.gather(layout, loaded, slots, again, case.skip_prefix)
        assert_same_bytes(again, chunk, "gather -> scatter -> gather chunk", ctx)
