"""The numpy oracle (the conformance suite's reference for non-torch arrays) agrees bit for bit
with the torch reference backend on the suite's own cases, for every layout variant: plane kinds
of their own geometry, split token/channel axes, padded channels, sections of unequal widths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lmcache_core.backend import reference_backend
from lmcache_core.testing.cases import LAYOUT_VARIANTS, Case, make_cases, poison_
from lmcache_core.testing.numpy_oracle import copy_like, numpy_dtype, numpy_gather, numpy_like, numpy_scatter

CASES = [c for c in make_cases(7, 3, LAYOUT_VARIANTS) if numpy_dtype(c.dtype_name) is not None]


def test_cases_cover_every_layout_variant() -> None:
    assert {c.label.rsplit("-", 1)[0] for c in CASES} == {v.name for v in LAYOUT_VARIANTS}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_oracle_gather_and_scatter_match_the_reference(case: Case) -> None:
    kv, layout = case.random_kv()
    slots = case.slot_tensor(unique=True)
    expected = poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype))
    reference_backend().gather(layout, kv, slots, expected, case.skip_prefix)
    got = numpy_like(poison_(torch.empty(case.chunk_shape(), dtype=case.chunk_dtype)))
    numpy_gather(layout, [numpy_like(t) for t in kv], slots.numpy(), got, case.skip_prefix)
    assert got.tobytes() == numpy_like(expected).tobytes()

    target, _ = case.poisoned_kv()
    np_target = [numpy_like(t) for t in target]
    src = case.random_chunk()
    reference_backend().scatter(layout, target, slots, src, case.skip_prefix)
    numpy_scatter(layout, np_target, slots.numpy(), numpy_like(src), case.skip_prefix)
    for t, a in zip(target, np_target, strict=True):
        assert numpy_like(t).tobytes() == a.tobytes()


def test_numpy_like_and_copy_like_keep_strides_and_offsets() -> None:
    base = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    view = base[1].t()  # offset 12, strides (1, 4)
    a = numpy_like(view)
    assert a.strides == (4, 16) and np.array_equal(a, view.numpy())
    b = copy_like(a)
    assert b.strides == a.strides and np.array_equal(a, b)
    assert b.__array_interface__["data"][0] != a.__array_interface__["data"][0]
