"""The conformance suite: a backend's gather and scatter, compared bit for bit with the reference.

Every test builds its inputs on the CPU from a seeded :class:`~lmcache_core.testing.cases.Case`,
copies them to :attr:`ConformanceSuite.device` (keeping their strides), runs the backend under
test there, runs the reference backend on the CPU copies, and compares integer views of the
results. Outputs are poisoned (every byte :data:`~lmcache_core.testing.cases.POISON_BYTE`)
before each call on both sides, so a missed row or a stray write shows as a difference.

Host chunks come from the backend's own ``alloc_host`` (pinned where it can), as in production;
set :attr:`ConformanceSuite.chunk_device` to keep them on a device instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.backends.reference import SlotRows, chunk_sections, plane_view
from lmcache_core.layout import KVCacheSpec, KVLayout
from lmcache_core.testing.cases import (
    LAYOUT_VARIANTS,
    Case,
    LayoutVariant,
    bits,
    empty_case,
    make_cases,
    make_group_cases,
    poison_,
    poison_value,
)
from lmcache_core.testing.plugin import USED, seed_and_cases
from lmcache_core.testing.require import backend_cannot_run


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, what: str, context: str = "") -> None:
    """Fail unless ``actual`` and ``expected`` hold the same bits (any dtype, any device).

    The message names ``what``, counts the differing elements, locates the first one and shows
    both bit patterns, then ``context`` (the suite passes the case and how to reproduce it).
    """
    __tracebackhide__ = True
    a, e = bits(actual.detach().cpu()), bits(expected.detach().cpu())
    if a.shape != e.shape:
        raise AssertionError(f"{what}: shape {tuple(a.shape)}, reference has {tuple(e.shape)}\n{context}")
    diff = a != e
    if not bool(diff.any()):
        return
    first = tuple(int(i) for i in torch.nonzero(diff)[0])
    mask = (1 << (8 * a.element_size())) - 1
    raise AssertionError(
        f"{what}: {int(diff.sum())} of {a.numel()} elements differ from the reference; first at "
        f"index {first}: bits {int(a[first]) & mask:#x}, reference {int(e[first]) & mask:#x}\n{context}"
    )


def _same_strides_cpu(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of ``t`` with ``t``'s shape and strides."""
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype).copy_(t)


class ConformanceSuite:
    """Base class of a backend's conformance tests; subclass it in a ``Test*`` class.

    Set :attr:`backend_name` (the entry-point name given to
    :func:`lmcache_core.selection.get_backend`) and :attr:`device`, or override
    :meth:`make_backend` to build the :class:`~lmcache_core.backend.Backend` directly.
    Combinations the backend's Capabilities do not cover (the core sends them to the reference)
    are skipped with that reason; when the backend's probe says it cannot run on this host, every
    test is skipped with the probe's reason (failed instead when ``LMCACHE_REQUIRE_BACKEND`` names
    the backend).
    """

    #: Entry-point name of the backend under test, e.g. ``"arm"``.
    backend_name: ClassVar[str] = ""
    #: torch device the engine's KV tensors are allocated on, e.g. ``"cpu"``, ``"cuda"``.
    device: ClassVar[str] = "cpu"
    #: Device of the host chunks; None: memory from the backend's ``alloc_host``.
    chunk_device: ClassVar[str | None] = None

    # ---- hooks a subclass may override --------------------------------------------------------

    def make_backend(self) -> Backend:
        """The backend under test; default: ``get_backend(device type, name=backend_name)``."""
        from lmcache_core.selection import get_backend

        if not self.backend_name:
            raise pytest.UsageError(
                f"{type(self).__name__}: set backend_name (an lmcache_core.backends entry-point name) "
                "or override make_backend()"
            )
        return get_backend(torch.device(self.device).type, name=self.backend_name)

    # ---- parametrisation and fixtures ---------------------------------------------------------

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        seed, count = seed_and_cases(metafunc.config)
        metafunc.config.stash[USED] = True
        if "conformance_case" in metafunc.fixturenames:
            cases = make_cases(seed, count)
            metafunc.parametrize("conformance_case", cases, ids=[c.id for c in cases])
        if "conformance_groups" in metafunc.fixturenames:
            groups = make_group_cases(seed, count)
            metafunc.parametrize("conformance_groups", groups, ids=[f"{a.id}+{b.kind}" for a, b in groups])
        if "conformance_variant" in metafunc.fixturenames:
            metafunc.parametrize(
                "conformance_variant", LAYOUT_VARIANTS, ids=[v.name for v in LAYOUT_VARIANTS]
            )

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_backend(cls) -> Backend:
        """The backend under test, or a skip saying why it cannot run on this host.

        The skip is a failure when ``LMCACHE_REQUIRE_BACKEND`` names :attr:`backend_name`
        (:func:`~lmcache_core.testing.require.backend_cannot_run`).
        """
        if cls.backend_name:
            from lmcache_core.discovery import discover_backends

            for found in discover_backends():
                if found.name == cls.backend_name and not found.available:
                    backend_cannot_run(
                        cls.backend_name,
                        f"backend {cls.backend_name!r} cannot run on this host: {found.reason}",
                    )
        try:
            torch.empty(1, device=cls.device)
        except (RuntimeError, AssertionError) as e:
            backend_cannot_run(
                cls.backend_name, f"device {cls.device!r} is not usable on this host: {type(e).__name__}: {e}"
            )
        return cls().make_backend()

    @pytest.fixture
    def conformance_context(self, request: pytest.FixtureRequest) -> Callable[[Case], str]:
        """Text for failure messages: the case in full and the command line that reruns it."""
        seed, count = seed_and_cases(request.config)

        def context(case: Case) -> str:
            return (
                f"case {case.describe()}\nreproduce: pytest -p lmcache_core.testing "
                f"--lmcache-conformance-seed={seed} --lmcache-conformance-cases={count} -k '{case.id}'"
            )

        return context

    # ---- helpers ------------------------------------------------------------------------------

    def _on_device(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Copies of CPU ``tensors`` on :attr:`device` with the same strides (permuted views stay so)."""
        return [
            torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=self.device).copy_(t)
            for t in tensors
        ]

    def _chunk(self, backend: Backend, case: Case, like: torch.Tensor | None = None) -> torch.Tensor:
        """A chunk where the backend writes or reads: poisoned, or a copy of ``like``. Typed
        ``[num_kv, num_layers, num_tokens, hidden]`` when the chunk format's sections are alike,
        else uint8 bytes (:meth:`Case.chunk_shape`)."""
        shape, dtype = case.chunk_shape(), case.chunk_dtype
        if self.chunk_device is None:
            nbytes = dtype.itemsize * math.prod(shape)
            chunk = backend.alloc_host(nbytes).view(dtype).view(shape)
        else:
            chunk = torch.empty(shape, dtype=dtype, device=self.chunk_device)
        return poison_(chunk) if like is None else chunk.copy_(like)

    def _device_kv(self, case: Case, cpu_kv: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], KVLayout]:
        kv = self._on_device(cpu_kv)
        return kv, case.detect(kv)

    def _require_own_kernels(self, backend: Backend, layout: KVLayout) -> None:
        owner = backend.kernel_name(layout)
        if owner != backend.name:
            pytest.skip(
                f"backend {backend.name!r} does not cover layout {layout.kind} in {layout.dtype} "
                f"(its Capabilities); the core sends these calls to {owner!r}"
            )

    def _gather(
        self,
        backend: Backend,
        case: Case,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        out: torch.Tensor,
        stream: int = 0,
    ) -> None:
        backend.gather(layout, kv, slots.to(self.device), out, case.skip_prefix, stream)
        backend.synchronize(backend.record_event(stream) if stream else None)

    def _scatter(
        self,
        backend: Backend,
        case: Case,
        layout: KVLayout,
        kv: Sequence[torch.Tensor],
        slots: torch.Tensor,
        src: torch.Tensor,
        stream: int = 0,
    ) -> None:
        backend.scatter(layout, kv, slots.to(self.device), src, case.skip_prefix, stream)
        backend.synchronize(backend.record_event(stream) if stream else None)

    def _check_gather(self, backend: Backend, case: Case, ctx: str) -> torch.Tensor:
        """Gather ``case`` on the backend and on the reference; compare; return the CPU chunk."""
        ref = reference_backend()
        kv_cpu, layout_cpu = case.random_kv()
        kv, layout = self._device_kv(case, kv_cpu)
        self._require_own_kernels(backend, layout)
        slots = case.slot_tensor()
        out = self._chunk(backend, case)
        self._gather(backend, case, layout, kv, slots, out)
        expected = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
        ref.gather(layout_cpu, kv_cpu, slots, expected, case.skip_prefix)
        what = f"gather out ({layout.chunk_format.tag}, {case.kind})"
        assert_same_bits(out, expected, what, ctx)
        live = set(case.live_tokens())
        untouched = [t for t in range(case.num_tokens) if t not in live]
        for section in chunk_sections(layout, out.cpu(), case.num_tokens):
            rows = section[:, untouched]
            if bool((rows != poison_value(rows.element_size())).any()):
                raise AssertionError(f"gather wrote rows of skipped or -1 tokens {untouched}\n{ctx}")
        for i, (t, t_cpu) in enumerate(zip(kv, kv_cpu, strict=True)):
            assert_same_bits(t, t_cpu, f"kv_caches[{i}] after gather (gather must not write KV)", ctx)
        return out.cpu()

    def _check_only_slots_written(
        self, case: Case, layout: KVLayout, kv: Sequence[torch.Tensor], slots: torch.Tensor, ctx: str
    ) -> None:
        """Every element outside the live tokens' slots still holds the poison."""
        live = [int(s) for s in slots[case.skip_prefix :] if int(s) >= 0]
        rows = SlotRows(layout, torch.tensor(live, dtype=torch.int64), 0, torch.device("cpu"))
        copies = [_same_strides_cpu(t) for t in kv]
        for p in range(layout.num_planes):
            kind = layout.plane_kind(p)
            plane_view(layout, copies, p)[rows.index(kind)] = poison_value(kind.element_size)
        for i, c in enumerate(copies):
            stray = int((bits(c) != poison_value(c.element_size())).sum())
            if stray:
                raise AssertionError(
                    f"scatter wrote {stray} elements of kv_caches[{i}] outside the live tokens' slots\n{ctx}"
                )

    def _check_scatter(self, backend: Backend, case: Case, ctx: str) -> None:
        ref = reference_backend()
        kv_cpu, layout_cpu = case.poisoned_kv()
        kv, layout = self._device_kv(case, kv_cpu)
        self._require_own_kernels(backend, layout)
        slots = case.slot_tensor(unique=True)
        src_cpu = case.random_chunk()
        src = self._chunk(backend, case, like=src_cpu)
        self._scatter(backend, case, layout, kv, slots, src)
        ref.scatter(layout_cpu, kv_cpu, slots, src_cpu, case.skip_prefix)
        for i, (t, t_ref) in enumerate(zip(kv, kv_cpu, strict=True)):
            assert_same_bits(t, t_ref, f"kv_caches[{i}] after scatter ({case.kind})", ctx)
        self._check_only_slots_written(case, layout, kv, slots, ctx)
        assert_same_bits(src, src_cpu, "src after scatter (scatter must not write its source)", ctx)

    def _check_round_trip(self, backend: Backend, case: Case, ctx: str) -> None:
        kv_cpu, _ = case.random_kv()
        kv, layout = self._device_kv(case, kv_cpu)
        self._require_own_kernels(backend, layout)
        slots = case.slot_tensor(unique=True)
        stream = backend.new_stream(torch.device(self.device))
        chunk = self._chunk(backend, case)
        self._gather(backend, case, layout, kv, slots, chunk, stream)
        fresh, fresh_layout = self._device_kv(case, case.poisoned_kv()[0])
        self._scatter(backend, case, fresh_layout, fresh, slots, chunk, stream)
        again = self._chunk(backend, case)
        self._gather(backend, case, fresh_layout, fresh, slots, again, stream)
        assert_same_bits(again, chunk, "gather -> scatter -> gather chunk", ctx)

    # ---- tests --------------------------------------------------------------------------------

    def test_gather_matches_reference(
        self, conformance_backend: Backend, conformance_case: Case, conformance_context: Callable[[Case], str]
    ) -> None:
        self._check_gather(conformance_backend, conformance_case, conformance_context(conformance_case))

    def test_scatter_matches_reference(
        self, conformance_backend: Backend, conformance_case: Case, conformance_context: Callable[[Case], str]
    ) -> None:
        self._check_scatter(conformance_backend, conformance_case, conformance_context(conformance_case))

    def test_round_trip(
        self, conformance_backend: Backend, conformance_case: Case, conformance_context: Callable[[Case], str]
    ) -> None:
        self._check_round_trip(conformance_backend, conformance_case, conformance_context(conformance_case))

    def test_layer_groups(
        self,
        conformance_backend: Backend,
        conformance_groups: tuple[Case, Case],
        conformance_context: Callable[[Case], str],
    ) -> None:
        """A two-group model (different block sizes and shapes): each group matches and round-trips.

        Both groups move the same chunk tokens, each through its own slot mapping.
        """
        backend = conformance_backend
        spec = KVCacheSpec(tuple(c.random_kv()[1] for c in conformance_groups))
        num_tokens = conformance_groups[0].num_tokens
        expected_nbytes = sum(c.chunk_nbytes() for c in conformance_groups)
        assert spec.chunk_nbytes(num_tokens) == expected_nbytes, "KVCacheSpec.chunk_nbytes"
        for case in conformance_groups:
            ctx = conformance_context(case)
            self._check_gather(backend, case, ctx)
            self._check_scatter(backend, case, ctx)
            self._check_round_trip(backend, case, ctx)

    def test_empty_chunk(self, conformance_backend: Backend, conformance_variant: LayoutVariant) -> None:
        """A chunk of zero tokens moves nothing and touches nothing."""
        case = empty_case(conformance_variant)
        kv_cpu, _ = case.random_kv()
        kv, layout = self._device_kv(case, kv_cpu)
        self._require_own_kernels(conformance_backend, layout)
        slots = case.slot_tensor()
        out = self._chunk(conformance_backend, case)
        self._gather(conformance_backend, case, layout, kv, slots, out)
        self._scatter(conformance_backend, case, layout, kv, slots, out)
        for i, (t, t_cpu) in enumerate(zip(kv, kv_cpu, strict=True)):
            assert_same_bits(t, t_cpu, f"kv_caches[{i}] after an empty gather and scatter", case.describe())

    def test_device_hooks(self, conformance_backend: Backend) -> None:
        """alloc_host gives writable uint8 ``[nbytes]`` host memory; streams and events complete."""
        backend = conformance_backend
        for pinned in (True, False):
            buf = backend.alloc_host(4096, pinned=pinned)
            got = (buf.dtype, tuple(buf.shape), buf.device.type)
            assert got == (torch.uint8, (4096,), "cpu"), f"alloc_host(4096, pinned={pinned}) gave {got}"
            buf.fill_(7)
            assert int(buf.sum()) == 7 * 4096, "alloc_host memory is not writable"
        empty = backend.alloc_host(0)
        assert tuple(empty.shape) == (0,), f"alloc_host(0) gave shape {tuple(empty.shape)}"
        stream: Any = backend.new_stream(torch.device(self.device))
        assert isinstance(stream, int), f"new_stream: expected an int handle, given {type(stream).__name__}"
        backend.synchronize(backend.record_event(stream))
        backend.synchronize()
