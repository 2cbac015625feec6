"""Property test: random valid and invalid layouts and slot arrays through every installed backend.

Each available backend is fuzzed in a subprocess of its own (this file run as a script), so a
crash - SIGSEGV, or an AddressSanitizer report under ``make -C packages/lmcache-arm asan-test`` -
fails the test instead of killing the test session. In the subprocess, hypothesis draws:

* a geometry: 1 to 3 plane kinds sharing layers, blocks and block size, each kind with its own
  heads, width and dtype of 1, 2 or 4 bytes (issue 12: unequal K/V widths, an indexer-like third
  kind), its token and channel axes split into 1 to 3 mixed-radix levels (transposed, pair- and
  quad-packed orders), and strides from a random order of every level with padding (so no two
  elements of a plane alias; padding after an innermost channel axis is a padded channel axis,
  TPU-style ``padded_width``);
* planes spread over 1-3 engine tensors with gaps (kinds of one dtype share tensors; kinds of
  different dtypes get tensors of their own), each tensor a view into a larger storage (a
  non-zero ``storage_offset``, spare bytes after it);
* a slot mapping with ``-1`` holes and a ``skip_prefix`` (unique live slots for scatter);
* valid cases, and cases with one corruption each: an out-of-range slot, a numpy or int32 slot mapping, a bad
  ``skip_prefix``, a plane offset past its storage or near 2**63, ``plane_tensor=-1``, a wrong
  ``element_size``, a negative stride or one that overflows the extent (issue 9, items 1 and 3),
  a split level's stride that overflows the extent.

Every case goes through the public :class:`~lmcache_core.backend.Backend` and, when the backend
moves the layout with its own kernels, through its raw hook too (the native checks alone). The
reference's hooks are reached only through ``Backend`` and do not validate again (issue 11.4), so
only its valid cases are also run through the raw hook. A
valid case must equal a naive oracle bit for bit (an element-by-element Python loop over the
storage); an invalid one must raise ValueError or TypeError with every byte of every storage
untouched. Examples are bounded (``LMCACHE_FUZZ_EXAMPLES``, default 30 per corruption and four times
that for valid cases: 570 in all per backend) and seeded
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
    "split_level_stride_overflows_extent",
)

#: Names of the drawn plane kinds, in order.
KIND_NAMES = ("k", "v", "indexer")


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
    valid_layout: Any  # the KVLayout as drawn, before any corruption (the chunk's format)
    storages: list[Any]  # 1-D torch tensors owning the memory; kv_caches are views into them
    leads: list[int]  # storage_offset (elements) of each kv tensor in its storage
    kv_caches: list[Any]
    slot_mapping: Any  # torch int64 [num_tokens], or the corrupted object
    scatter_slots: Any  # unique live slots for scatter
    skip_prefix: int
    num_tokens: int
    corruption: str | None


def _factor(draw: Any, n: int, levels: int) -> list[int]:
    """``n`` as ``levels`` factors (little-endian level sizes), each drawn from the divisors left."""
    from hypothesis import strategies as st

    sizes = []
    for _ in range(levels - 1):
        d = draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))
        sizes.append(d)
        n //= d
    return [*sizes, n]


def _strategies() -> Any:
    import dataclasses

    import torch
    from hypothesis import strategies as st

    from lmcache_core.layout import Axis, KVLayout, PlaneKind
    from lmcache_core.layout_registry import LAYOUT_KINDS

    dtypes = [torch.float8_e4m3fn, torch.float16, torch.bfloat16, torch.float32]
    int_of = {1: torch.uint8, 2: torch.int16, 4: torch.int32}

    def kind_geometry(
        draw: Any, name: str, dtype: Any, num_blocks: int, block_size: int, width_unit: int
    ) -> tuple[PlaneKind, int]:
        """One plane kind with split axes and padded strides; and its plane's span in elements.
        ``width_unit`` divides the width (4 bytes per row multiple when kinds mix element sizes,
        so every chunk section starts aligned for its dtype)."""
        heads, width = draw(st.integers(1, 3)), width_unit * draw(st.integers(1, max(1, 6 // width_unit)))
        token = _factor(draw, block_size, draw(st.integers(1, 3)))
        channel = _factor(draw, width, draw(st.integers(1, 3)))
        atoms = [("block", 0, num_blocks), ("head", 0, heads)]
        atoms += [("token", i, n) for i, n in enumerate(token)] + [
            ("channel", i, n) for i, n in enumerate(channel)
        ]
        order = draw(st.permutations(atoms))  # outermost first
        stride: dict[tuple[str, int], int] = {}
        inner, padded_width = 1, width
        for axis, level, size in reversed(order):
            stride[(axis, level)] = inner
            pad = draw(st.integers(0, 2))  # padding: never aliasing
            if (axis, level) == order[-1][:2] and axis == "channel" and len(channel) == 1:
                padded_width = width + pad  # an innermost channel axis with spare lanes: padded channels
            inner = inner * size + pad
        kind = PlaneKind(
            name=name,
            width=width,
            heads=heads,
            dtype=str(dtype).removeprefix("torch."),
            element_size=dtype.itemsize,
            block_stride=stride[("block", 0)],
            head_stride=stride[("head", 0)],
            token=tuple(Axis(n, stride[("token", i)]) for i, n in enumerate(token)),
            channel=tuple(Axis(n, stride[("channel", i)]) for i, n in enumerate(channel)),
            padded_width=padded_width,
        )
        return kind, inner

    @st.composite
    def cases(draw: Any, device: str, corruption: str | None) -> Case:
        num_kinds = draw(st.integers(1, 3))
        num_layers = draw(st.integers(1, 3))
        num_blocks, block_size = draw(st.integers(1, 5)), draw(st.integers(1, 6))
        kind_dtype = [draw(st.sampled_from(dtypes))] * num_kinds
        if num_kinds > 1 and draw(st.booleans()):
            kind_dtype = [draw(st.sampled_from(dtypes)) for _ in range(num_kinds)]
        kinds, spans = [], []
        for k in range(num_kinds):
            unit = 4 // kind_dtype[k].itemsize if len(set(kind_dtype)) > 1 else 1
            kind, span = kind_geometry(draw, KIND_NAMES[k], kind_dtype[k], num_blocks, block_size, unit)
            kinds.append(kind)
            spans.append(span)
        # tensors: one group per dtype, 1-3 tensors in a group shared by its kinds' planes
        groups = sorted({str(d) for d in kind_dtype})
        group_tensors = {g: draw(st.integers(1, 3)) for g in groups}
        first = {}
        num_tensors = 0
        for g in groups:
            first[g] = num_tensors
            num_tensors += group_tensors[g]
        tensor_dtype = [
            next(d for d in kind_dtype if str(d) == g) for g in groups for _ in range(group_tensors[g])
        ]
        plane_tensor, plane_offset = [], []
        cursor = [0] * num_tensors
        for k in range(num_kinds):
            g = str(kind_dtype[k])
            for _ in range(num_layers):
                t = first[g] + draw(st.integers(0, group_tensors[g] - 1))
                start = cursor[t] + draw(st.integers(0, 3))
                plane_tensor.append(t)
                plane_offset.append(start)
                cursor[t] = start + spans[k]
        lengths = [max(1, c + draw(st.integers(0, 3))) for c in cursor]  # spare elements at each tensor's end
        leads = [draw(st.integers(0, 4)) for _ in range(num_tensors)]  # storage_offset of each tensor
        tails = [draw(st.integers(0, 4)) for _ in range(num_tensors)]  # storage after each tensor
        gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
        storages, kv = [], []
        for dtype, length, lead, tail in zip(tensor_dtype, lengths, leads, tails, strict=True):
            info = torch.iinfo(int_of[dtype.itemsize])
            raw = torch.randint(
                info.min, info.max, (lead + length + tail,), generator=gen, dtype=int_of[dtype.itemsize]
            )
            storages.append(raw.view(dtype).to(device))
            kv.append(storages[-1][lead : lead + length])
        layout = KVLayout(
            kind=draw(st.sampled_from(sorted(LAYOUT_KINDS))),
            num_layers=num_layers,
            num_blocks=num_blocks,
            block_size=block_size,
            kinds=tuple(kinds),
            num_tensors=num_tensors,
            tensor_shapes=tuple((n,) for n in lengths),
            tensor_strides=((1,),) * num_tensors,
            plane_tensor=tuple(plane_tensor),
            plane_offset=tuple(plane_offset),
        )
        num_slots = num_blocks * block_size
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
            valid_layout=layout,
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
            _corrupt(draw, case, corruption, [s.numel() for s in storages])
        return case

    def _with_kind(layout: Any, k: int, **fields: Any) -> Any:
        kinds = list(layout.kinds)
        kinds[k] = dataclasses.replace(kinds[k], **fields)
        return dataclasses.replace(layout, kinds=tuple(kinds))

    def _axis_with(axes: tuple[Any, ...], level: int, stride: int) -> tuple[Any, ...]:
        return tuple(Axis(a.size, stride) if i == level else a for i, a in enumerate(axes))

    def _corrupt(draw: Any, case: Case, what: str, storage_len: list[int]) -> None:
        layout = case.layout
        case.corruption = what
        p = draw(st.integers(0, len(layout.plane_offset) - 1))
        pk = p // layout.num_layers  # the kind of plane p
        kind = layout.kinds[pk]
        extent = 1 + (layout.num_blocks - 1) * kind.block_stride + (kind.heads - 1) * kind.head_stride
        extent += sum((a.size - 1) * a.stride for a in (*kind.token, *kind.channel))
        offsets = list(layout.plane_offset)
        # (kind, field, level, count) of every stride that reaches past element 0
        counting = []
        for k, kind in enumerate(layout.kinds):
            if layout.num_blocks > 1:
                counting.append((k, "block_stride", 0, layout.num_blocks))
            if kind.heads > 1:
                counting.append((k, "head_stride", 0, kind.heads))
            for axis in ("token", "channel"):
                counting += [(k, axis, i, a.size) for i, a in enumerate(getattr(kind, axis)) if a.size > 1]
        split = [
            c for c in counting if c[1] in ("token", "channel") and len(getattr(layout.kinds[c[0]], c[1])) > 1
        ]
        if not counting and what in ("stride_overflows_extent", "plane_offset_near_2_63_large_block_stride"):
            what = case.corruption = "plane_offset_near_2_63"  # a one-element plane has no stride to abuse
        if not split and what == "split_level_stride_overflows_extent":
            what = case.corruption = "stride_overflows_extent" if counting else "plane_offset_near_2_63"

        def set_stride(layout: Any, k: int, field: str, level: int, value: int) -> Any:
            if field in ("token", "channel"):
                return _with_kind(
                    layout, k, **{field: _axis_with(getattr(layout.kinds[k], field), level, value)}
                )
            return _with_kind(layout, k, **{field: value})

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
            case.layout = dataclasses.replace(layout, plane_offset=tuple(offsets))
        elif what == "plane_offset_near_2_63":
            offsets[p] = 2**63 - draw(st.integers(1, extent + 64))
            case.layout = dataclasses.replace(layout, plane_offset=tuple(offsets))
        elif what == "plane_offset_near_2_63_large_block_stride":
            # the repro: plane_offset * element_size and plane_offset + extent both wrap
            k, field, level, count = next((c for c in counting if c[1] == "block_stride"), counting[0])
            big = (2**62 + 2**10) // (count - 1) + 1
            case.layout = set_stride(
                dataclasses.replace(layout, plane_offset=(2**63 - 64,) * len(offsets)), k, field, level, big
            )
        elif what == "plane_offset_negative":
            offsets[p] = -draw(st.integers(1, 2**63))
            case.layout = dataclasses.replace(layout, plane_offset=tuple(offsets))
        elif what in ("plane_tensor_minus_one", "plane_tensor_past_end"):
            tensors = list(layout.plane_tensor)
            tensors[p] = -1 if what == "plane_tensor_minus_one" else layout.num_tensors
            case.layout = dataclasses.replace(layout, plane_tensor=tuple(tensors))
        elif what == "element_size_wrong":
            es = layout.kinds[pk].element_size
            wrong = draw(st.sampled_from([s for s in (1, 2, 3, 4, 8, 0) if s != es]))
            case.layout = _with_kind(layout, pk, element_size=wrong)
        elif what == "stride_negative":
            kind = layout.kinds[pk]
            fields = [("block_stride", 0), ("head_stride", 0)]
            fields += [(axis, i) for axis in ("token", "channel") for i in range(len(getattr(kind, axis)))]
            field, level = draw(st.sampled_from(fields))
            case.layout = set_stride(layout, pk, field, level, -draw(st.integers(1, 2**63)))
        else:  # an axis (or split level) of more than one element makes its stride count
            k, field, level, count = draw(st.sampled_from(split if what.startswith("split") else counting))
            case.layout = set_stride(layout, k, field, level, 2**63 // (count - 1) + draw(st.integers(0, 9)))

    return cases


def _oracle(case: Case, chunk_bytes: list[int], storage_bytes: list[list[int]], gather: bool) -> None:
    """Move elements one at a time, byte by byte, through the storages (the layout's documented
    index math: per kind, block and head strides plus each split level's digit times its stride;
    the chunk one section [num_layers, num_tokens, heads * width] per kind)."""
    from lmcache_core.layout import split_offset

    g = case.layout
    slots = (case.slot_mapping if gather else case.scatter_slots).tolist()
    section = 0
    for k, kind in enumerate(g.kinds):
        es, hidden = kind.element_size, kind.heads * kind.width
        for layer in range(g.num_layers):
            p = k * g.num_layers + layer
            t = g.plane_tensor[p]
            base = case.leads[t] + g.plane_offset[p]
            for tok in range(case.skip_prefix, case.num_tokens):
                if slots[tok] < 0:
                    continue
                block, row = divmod(slots[tok], g.block_size)
                for h in range(kind.heads):
                    for c in range(kind.width):
                        at = base + block * kind.block_stride + h * kind.head_stride
                        at += split_offset(kind.token, row) + split_offset(kind.channel, c)
                        x = section + ((layer * case.num_tokens + tok) * hidden + h * kind.width + c) * es
                        for b in range(es):
                            if gather:
                                chunk_bytes[x + b] = storage_bytes[t][at * es + b]
                            else:
                                storage_bytes[t][at * es + b] = chunk_bytes[x + b]
        section += g.num_layers * case.num_tokens * hidden * es


def _bits(t: Any) -> list[int]:
    import torch

    return t.cpu().reshape(-1).view(torch.uint8).tolist()


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
    raw: Any = import_plugin(found.probe.plugin) if found.probe and found.probe.plugin else None
    if name == "reference":
        raw = import_plugin("lmcache_core.backends.reference")
    assert backend is not None and (name != "reference" or backend is reference_backend())
    tally = {"valid": 0, "refused": 0}
    refused_by: dict[str, int] = {}
    cases = _strategies()

    def run(case: Case, gather: bool, direct: bool) -> None:
        layout = case.layout
        fmt = case.valid_layout.chunk_format  # typed 4-D when the kinds' sections agree, else uint8 bytes
        noise = torch.randint(0, 256, (fmt.nbytes(case.num_tokens),), dtype=torch.uint8)
        chunk = (
            noise.view(getattr(torch, fmt.dtype)).view(fmt.shape(case.num_tokens))
            if fmt.is_uniform
            else noise
        )
        chunk = chunk.to(device)
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
