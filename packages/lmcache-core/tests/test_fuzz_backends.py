"""Property test: random valid and invalid layouts and slot arrays through every installed backend.

Each available backend is fuzzed in a subprocess of its own (this file run as a script), so a
crash - SIGSEGV, or an AddressSanitizer report under ``make -C packages/lmcache-arm asan-test`` -
fails the test instead of killing the test session. In the subprocess, hypothesis draws:

* a geometry (num_kv, layers, blocks, block size, heads, head size), a dtype of 1, 2 or 4 bytes
  and strides from a random axis order with padding (so no two elements of a plane alias);
* planes spread over 1-3 engine tensors with gaps, each tensor a view into a larger storage (a
  non-zero ``storage_offset``, spare bytes after it);
* a slot mapping with ``-1`` holes and a ``skip_prefix`` (unique live slots for scatter);
* valid cases, and cases with one corruption each: an out-of-range slot, a numpy or int32 slot mapping, a bad
  ``skip_prefix``, a plane offset past its storage or near 2**63, ``plane_tensor=-1``, a wrong
  ``element_size``, a negative stride or one that overflows the extent (issue 9, items 1 and 3).

Every case goes through the public :class:`~lmcache_core.backend.Backend` and, when the backend
moves the layout with its own kernels, through its raw hook too (the native checks alone). The
reference's hooks are reached only through ``Backend`` and do not validate again (issue 11.4), so
only its valid cases are also run through the raw hook. A
valid case must equal a naive oracle bit for bit (an element-by-element Python loop over the
storage); an invalid one must raise ValueError or TypeError with every byte of every storage
untouched. Examples are bounded (``LMCACHE_FUZZ_EXAMPLES``, default 30 per corruption and four times
that for valid cases: 540 in all per backend) and seeded
(``LMCACHE_FUZZ_SEED``, default 0) so the run is reproducible and well under a minute.

Run by hand: ``python packages/lmcache-core/tests/test_fuzz_backends.py --backend arm``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest

EXAMPLES = int(os.environ.get("LMCACHE_FUZZ_EXAMPLES", "30"))
SEED = int(os.environ.get("LMCACHE_FUZZ_SEED", "0"))

#: Corruptions an invalid case applies; each must be refused with ValueError or TypeError.
CORRUPTIONS = (
    "slot_too_high",
    "slot_below_minus_one",
    "slot_numpy",
    "slot_int32",
    "skip_prefix_past_end",
    "plane_offset_past_storage",
    "plane_offset_near_2_63",
    "plane_offset_near_2_63_large_block_stride",
    "plane_offset_negative",
    "plane_tensor_minus_one",
    "plane_tensor_past_end",
    "element_size_wrong",
    "stride_negative",
    "stride_overflows_extent",
)


def _fuzzable_backends() -> list[tuple[str, str]]:
    """``(name, device type)`` of every backend whose probe says it can run here."""
    from lmcache_core.discovery import discover_backends

    found = []
    for d in discover_backends():
        if d.available and d.probe is not None:
            kinds = [t for t in d.probe.device_types if t != "*"]
            found.append((d.name, "cpu" if d.probe.serves("cpu") or not kinds else kinds[0]))
    return found


@pytest.mark.parametrize(("backend", "device"), _fuzzable_backends() if __name__ != "__main__" else [])
def test_backend_survives_random_layouts_and_slots(backend: str, device: str) -> None:
    """The worker exits 0 and reports both valid and refused cases (a crash is a non-zero exit)."""
    cmd = [sys.executable, __file__, "--backend", backend, "--device", device]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    output = f"rc={proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    assert proc.returncode == 0, output
    found = re.search(r"fuzz (\S+): valid=(\d+) refused=(\d+)", proc.stdout)
    assert found is not None and found.group(1) == backend, output
    valid, refused = int(found.group(2)), int(found.group(3))
    assert valid > 0 and refused > 0, output
    for corruption in CORRUPTIONS:  # every corruption was drawn and refused
        assert re.search(rf"refused +\d+ +(gather|scatter) Backend {corruption}\n", proc.stdout), output


# ---- the worker (runs in the subprocess) --------------------------------------------------------


@dataclass
class Case:
    """One drawn transfer: the layout, storages holding the tensors, and the call's arguments."""

    layout: Any  # KVLayout (possibly corrupted)
    storages: list[Any]  # 1-D torch tensors owning the memory; kv_caches are views into them
    leads: list[int]  # storage_offset (elements) of each kv tensor in its storage
    kv_caches: list[Any]
    slot_mapping: Any  # torch int64 [num_tokens], or the corrupted object
    scatter_slots: Any  # unique live slots for scatter
    skip_prefix: int
    num_tokens: int
    corruption: str | None


def _strategies() -> Any:
    import torch
    from hypothesis import strategies as st

    from lmcache_core.layout import KVLayout
    from lmcache_core.layout_registry import LAYOUT_KINDS

    dtypes = [torch.float8_e4m3fn, torch.float16, torch.bfloat16, torch.float32]
    int_of = {1: torch.uint8, 2: torch.int16, 4: torch.int32}

    @st.composite
    def cases(draw: Any, device: str, corruption: str | None) -> Case:
        num_kv = draw(st.sampled_from([1, 2]))
        num_layers = draw(st.integers(1, 3))
        dims = {
            "block": draw(st.integers(1, 5)),
            "token": draw(st.integers(1, 4)),
            "head": draw(st.integers(1, 3)),
            "channel": draw(st.integers(1, 5)),
        }
        dtype = draw(st.sampled_from(dtypes))
        es = dtype.itemsize
        order = draw(st.permutations(list(dims)))  # outermost first
        stride: dict[str, int] = {}
        inner = 1
        for axis in reversed(order):
            stride[axis] = inner
            inner = inner * dims[axis] + draw(st.integers(0, 2))  # padding: never aliasing
        extent = 1 + sum((dims[a] - 1) * stride[a] for a in dims)
        planes = num_kv * num_layers
        num_tensors = draw(st.integers(1, min(planes, 3)))
        plane_tensor = [draw(st.integers(0, num_tensors - 1)) for _ in range(planes)]
        cursor = [0] * num_tensors
        plane_offset = []
        for t in plane_tensor:
            start = cursor[t] + draw(st.integers(0, 3))
            plane_offset.append(start)
            cursor[t] = start + inner
        # every engine tensor has the layout's one shape: [longest] elements, spare ones at the end
        length = max(cursor) + draw(st.integers(0, 3))
        leads = [draw(st.integers(0, 4)) for _ in range(num_tensors)]  # storage_offset of each tensor
        tails = [draw(st.integers(0, 4)) for _ in range(num_tensors)]  # storage after each tensor
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        info = torch.iinfo(int_of[es])
        storages, kv = [], []
        for lead, tail in zip(leads, tails, strict=True):
            raw = torch.randint(info.min, info.max, (lead + length + tail,), generator=gen, dtype=int_of[es])
            storages.append(raw.view(dtype).to(device))
            kv.append(storages[-1][lead : lead + length])
        layout = KVLayout.uniform(
            kind=draw(st.sampled_from(sorted(LAYOUT_KINDS))),
            num_kv=num_kv,
            num_layers=num_layers,
            num_blocks=dims["block"],
            block_size=dims["token"],
            num_kv_heads=dims["head"],
            head_size=dims["channel"],
            dtype=str(dtype).removeprefix("torch."),
            element_size=es,
            num_tensors=num_tensors,
            tensor_shape=(length,),
            tensor_stride=(1,),
            plane_tensor=tuple(plane_tensor),
            plane_offset=tuple(plane_offset),
            block_stride=stride["block"],
            token_stride=stride["token"],
            head_stride=stride["head"],
            channel_stride=stride["channel"],
        )
        num_slots = dims["block"] * dims["token"]
        num_tokens = draw(st.integers(1, 8))
        slots = [draw(st.integers(-1, num_slots - 1)) for _ in range(num_tokens)]
        skip_prefix = draw(st.integers(0, num_tokens))
        seen: set[int] = set()
        unique = []
        for t, s in enumerate(slots):
            keep = t < skip_prefix or s < 0 or s not in seen
            unique.append(s if keep else -1)
            if t >= skip_prefix and s >= 0:
                seen.add(s)
        case = Case(
            layout=layout,
            storages=storages,
            leads=leads,
            kv_caches=kv,
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
            scatter_slots=torch.tensor(unique, dtype=torch.int64),
            skip_prefix=skip_prefix,
            num_tokens=num_tokens,
            corruption=None,
        )
        if corruption is not None:
            _corrupt(draw, case, corruption, extent, [s.numel() for s in storages])
        return case

    def _corrupt(draw: Any, case: Case, what: str, extent: int, storage_len: list[int]) -> None:
        layout = case.layout
        sizes = {
            "block_stride": layout.num_blocks,
            "token_stride": layout.block_size,
            "head_stride": layout.num_kv_heads,
            "channel_stride": layout.head_size,
        }
        counting = sorted(f for f, n in sizes.items() if n > 1)  # strides that reach past element 0
        case.corruption = what
        p = draw(st.integers(0, len(layout.plane_offset) - 1))
        offsets = list(layout.plane_offset)
        if not counting and what in ("stride_overflows_extent", "plane_offset_near_2_63_large_block_stride"):
            what = case.corruption = "plane_offset_near_2_63"  # a one-element plane has no stride to abuse
        if what in ("slot_too_high", "slot_below_minus_one"):
            case.skip_prefix = min(case.skip_prefix, case.num_tokens - 1)  # at least one live token
            t = draw(st.integers(case.skip_prefix, case.num_tokens - 1))
            if what == "slot_too_high":
                bad = draw(st.sampled_from([layout.num_slots, layout.num_slots + 7, 2**40, 2**63 - 1]))
            else:
                bad = draw(st.sampled_from([-2, -(2**40), -(2**63)]))
            for slots in (case.slot_mapping, case.scatter_slots):
                slots[t] = bad
        elif what == "slot_numpy":
            case.slot_mapping, case.scatter_slots = case.slot_mapping.numpy(), case.scatter_slots.numpy()
        elif what == "slot_int32":
            case.slot_mapping, case.scatter_slots = case.slot_mapping.int(), case.scatter_slots.int()
        elif what == "skip_prefix_past_end":
            case.skip_prefix = case.num_tokens + draw(st.integers(1, 3))
        elif what == "plane_offset_past_storage":
            reach = storage_len[layout.plane_tensor[p]] - case.leads[layout.plane_tensor[p]]
            offsets[p] = reach - extent + draw(st.integers(1, 5))
            case.layout = _replace(layout, plane_offset=tuple(offsets))
        elif what == "plane_offset_near_2_63":
            offsets[p] = 2**63 - draw(st.integers(1, extent + 64))
            case.layout = _replace(layout, plane_offset=tuple(offsets))
        elif what == "plane_offset_near_2_63_large_block_stride":
            # the repro: plane_offset * element_size and plane_offset + extent both wrap
            field = "block_stride" if layout.num_blocks > 1 else counting[0]
            big = (2**62 + 2**10) // (sizes[field] - 1) + 1
            case.layout = _replace(layout, plane_offset=(2**63 - 64,) * len(offsets), **{field: big})
        elif what == "plane_offset_negative":
            offsets[p] = -draw(st.integers(1, 2**63))
            case.layout = _replace(layout, plane_offset=tuple(offsets))
        elif what in ("plane_tensor_minus_one", "plane_tensor_past_end"):
            tensors = list(layout.plane_tensor)
            tensors[p] = -1 if what == "plane_tensor_minus_one" else layout.num_tensors
            case.layout = _replace(layout, plane_tensor=tuple(tensors))
        elif what == "element_size_wrong":
            wrong = draw(st.sampled_from([s for s in (1, 2, 3, 4, 8, 0) if s != layout.element_size]))
            case.layout = _replace(layout, element_size=wrong)
        elif what == "stride_negative":
            field = draw(st.sampled_from(sorted(sizes)))
            case.layout = _replace(layout, **{field: -draw(st.integers(1, 2**63))})
        else:  # stride_overflows_extent: only an axis of more than one element makes its stride count
            field = draw(st.sampled_from(counting))
            case.layout = _replace(layout, **{field: 2**63 // (sizes[field] - 1) + draw(st.integers(0, 9))})

    return cases


def _replace(layout: Any, **fields: Any) -> Any:
    return layout.replace_geometry(**fields)


def _oracle(case: Case, chunk_bits: list[int], storage_bits: list[list[int]], gather: bool) -> None:
    """Move elements one at a time through the storages (the layout's documented index math)."""
    g = case.layout
    slots = (case.slot_mapping if gather else case.scatter_slots).tolist()
    hidden = g.num_kv_heads * g.head_size
    for p in range(g.num_kv * g.num_layers):
        t = g.plane_tensor[p]
        base = case.leads[t] + g.plane_offset[p]
        for tok in range(case.skip_prefix, case.num_tokens):
            if slots[tok] < 0:
                continue
            block, row = divmod(slots[tok], g.block_size)
            for h in range(g.num_kv_heads):
                for c in range(g.head_size):
                    at = base + block * g.block_stride + row * g.token_stride + h * g.head_stride
                    at += c * g.channel_stride
                    x = (p * case.num_tokens + tok) * hidden + h * g.head_size + c
                    if gather:
                        chunk_bits[x] = storage_bits[t][at]
                    else:
                        storage_bits[t][at] = chunk_bits[x]


def _bits(t: Any) -> list[int]:
    import torch

    return t.cpu().view({1: torch.uint8, 2: torch.int16, 4: torch.int32}[t.element_size()]).flatten().tolist()


def _worker(name: str, device: str, examples: int, seed: int) -> None:
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    from lmcache_core.backend import import_plugin, reference_backend
    from lmcache_core.discovery import discover_backends
    from lmcache_core.selection import load_backend

    found = {d.name: d for d in discover_backends()}[name]
    backend = load_backend(found)
    raw = import_plugin(found.probe.plugin) if found.probe and found.probe.plugin else None
    if name == "reference":
        raw = import_plugin("lmcache_core.backends.reference")
    assert backend is not None and (name != "reference" or backend is reference_backend())
    tally = {"valid": 0, "refused": 0}
    refused_by: dict[str, int] = {}
    cases = _strategies()

    def run(case: Case, gather: bool, direct: bool) -> None:
        layout = case.layout
        shape = (layout.num_kv, layout.num_layers, case.num_tokens, layout.num_kv_heads * layout.head_size)
        dtype = case.storages[0].dtype
        int_dtype = {1: torch.uint8, 2: torch.int16, 4: torch.int32}[dtype.itemsize]
        info = torch.iinfo(int_dtype)
        chunk = torch.randint(info.min, info.max, shape, dtype=int_dtype).view(dtype).to(device)
        chunk_before = _bits(chunk)
        storages_before = [_bits(s) for s in case.storages]
        slots = case.slot_mapping if gather else case.scatter_slots
        if direct:
            hook = raw.lmcache_gather if gather else raw.lmcache_scatter
            key = "out" if gather else "src"
            kwargs = {"layout": layout, "kv_caches": case.kv_caches, "slot_mapping": slots, key: chunk}
            call = lambda: hook(**kwargs, skip_prefix=case.skip_prefix, stream=0)  # noqa: E731
        else:
            method = backend.gather if gather else backend.scatter
            call = lambda: method(layout, case.kv_caches, slots, chunk, case.skip_prefix)  # noqa: E731
        what = f"{'gather' if gather else 'scatter'} {'hook' if direct else 'Backend'} {case.corruption}"
        if case.corruption is not None:
            try:
                call()
            except (ValueError, TypeError):
                tally["refused"] += 1
                refused_by[what] = refused_by.get(what, 0) + 1
            else:
                raise AssertionError(f"{what}: accepted")
            assert _bits(chunk) == chunk_before, f"{what}: chunk written before the error"
            for i, s in enumerate(case.storages):
                assert _bits(s) == storages_before[i], f"{what}: storage {i} written before the error"
            return
        call()
        if device != "cpu":
            backend.synchronize()
        want_chunk, want_storages = list(chunk_before), [list(b) for b in storages_before]
        _oracle(case, want_chunk, want_storages, gather)
        assert _bits(chunk) == want_chunk, f"{what}: chunk differs from the oracle"
        for i, s in enumerate(case.storages):
            assert _bits(s) == want_storages[i], f"{what}: storage {i} differs from the oracle"
        tally["valid"] += 1

    for corruption in (None, *CORRUPTIONS):  # each kind of case gets its share of the examples

        @hypothesis_seed(seed)
        @settings(
            max_examples=examples * (4 if corruption is None else 1),
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(case=cases(device, corruption), gather=st.booleans())
        def prop(case: Case, gather: bool) -> None:
            run(case, gather, direct=False)
            if (
                raw is not None
                and backend.handles(case.layout)
                and (name != "reference" or case.corruption is None)
            ):
                run(case, gather, direct=True)

        prop()
    for what, count in sorted(refused_by.items()):
        print(f"  refused {count:4d}  {what}")
    print(f"  accepted and equal to the oracle: {tally['valid']}")
    print(f"fuzz {name}: valid={tally['valid']} refused={tally['refused']} examples={examples} seed={seed}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--examples", type=int, default=EXAMPLES)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args()
    _worker(args.backend, args.device, args.examples, args.seed)


if __name__ == "__main__":
    main()
