"""Bad arguments to Backend.gather / Backend.scatter, and bad backend names.

Every failure must be a ValueError or TypeError whose message names the argument, what was
expected and what was given; and nothing may be written before the check fails.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from lmcache_core.backend import Backend, reference_backend
from lmcache_core.layout import KVLayout
from lmcache_core.layout_registry import allocate_example, detect_layout
from lmcache_core.plugin_api import BACKEND_ENV
from lmcache_core.selection import get_backend, select_backend

L, NB, BS, H, D = 2, 5, 4, 3, 8  # 20 slots, hidden 24
NUM_SLOTS = NB * BS


def nhd(dtype: torch.dtype = torch.float16) -> tuple[list[torch.Tensor], KVLayout]:
    tensors, hints = allocate_example(
        "vllm_flash_nhd", num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=H, head_size=D, dtype=dtype
    )
    for i, t in enumerate(tensors):
        t.copy_(torch.randn(t.shape, generator=torch.Generator().manual_seed(i)))
    return tensors, detect_layout(tensors, hints)


def chunk(num_tokens: int = 3, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    return torch.full((2, L, num_tokens, H * D), 7.0, dtype=dtype)


SLOTS = torch.tensor([0, 5, 19], dtype=torch.int64)

Call = Callable[..., None]


def gather(backend: Backend) -> Call:
    return backend.gather


def scatter(backend: Backend) -> Call:
    return backend.scatter


OPS = {"gather": ("out", gather), "scatter": ("src", scatter)}


def raises(exc: type[Exception], call: Callable[[], object], *fragments: str) -> str:
    """Run ``call``; it must raise ``exc`` whose message holds every fragment. Returns the message."""
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


@pytest.fixture(params=list(OPS))
def op(request: pytest.FixtureRequest) -> tuple[str, Call]:
    name, make = OPS[request.param]
    return name, make(reference_backend())


def expect_moved(
    name: str, kv_before: list[torch.Tensor], slots: torch.Tensor, skip: int = 0
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The KV and chunk a correct ``name`` ("out": gather, "src": scatter) leaves, by index math.

    Token ``t`` moves when ``t >= skip`` and ``slots[t] != -1``; its slot is block
    ``slot // BS``, row ``slot % BS`` of every layer's ``[2, NB, BS, H, D]`` tensor.
    """
    kv = [t.clone() for t in kv_before]
    c = chunk(slots.numel())
    for t, slot in enumerate(slots.tolist()):
        if t < skip or slot == -1:
            continue
        block, row = divmod(slot, BS)
        for layer in range(L):
            for k in range(2):
                if name == "out":
                    c[k, layer, t] = kv_before[layer][k, block, row].reshape(H * D)
                else:
                    kv[layer][k, block, row] = c[k, layer, t].view(H, D)
    return kv, c


def assert_moved(name: str, call: Call, kv: list[torch.Tensor] | tuple[torch.Tensor, ...], layout: KVLayout,
                 slots: torch.Tensor, skip: int = 0) -> None:  # fmt: skip
    """Run ``call`` on a fresh chunk; KV and chunk must equal :func:`expect_moved` bit for bit."""
    want_kv, want_chunk = expect_moved(name, list(kv), slots, skip)
    c = chunk(slots.numel())
    call(layout, kv, slots, c, skip)
    assert torch.equal(c.view(torch.int16), want_chunk.view(torch.int16)), f"{name} differs"
    for i, (t, w) in enumerate(zip(kv, want_kv, strict=True)):
        assert torch.equal(t.view(torch.int16), w.view(torch.int16)), f"kv_caches[{i}] differs"


def test_valid_call_works(op: tuple[str, Call]) -> None:
    name, call = op
    kv, layout = nhd()
    assert_moved(name, call, kv, layout, SLOTS)  # the baseline the other tests perturb


# ---- each bad argument, named ----------------------------------------------------------------


def with_slot(index: int, value: int) -> torch.Tensor:
    slots = SLOTS.clone()
    slots[index] = value
    return slots


def meta_twin(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")


#: A chunk and a KV tensor whose strides the messages quote.
NOT_CONTIGUOUS = torch.zeros(2, L, H * D, 3, dtype=torch.float16).transpose(2, 3)
HND_BEHIND_NHD = torch.empty(2, NB, H, BS, D, dtype=torch.float16).permute(0, 1, 3, 2, 4)

Make = Callable[[list[torch.Tensor]], dict[str, Any]]


def bad(what: str, exc: type[Exception], make: Make, *fragments: str) -> Any:
    """A call with one bad argument: ``make(kv)`` gives the arguments that differ from a valid
    call (``kv_caches``, ``slot_mapping``, ``chunk``, ``skip_prefix``); the error must hold every
    fragment, ``<chunk>`` standing for the chunk's name (``out`` or ``src``)."""
    return pytest.param(exc, make, fragments, id=what)


BAD_CALLS = [
    # slot_mapping
    *(bad(f"slot_mapping: {value} out of range at index {index}", ValueError,
          lambda kv, i=index, v=value: {"slot_mapping": with_slot(i, v)},
          "slot_mapping", f"expected slots in [-1, {NUM_SLOTS})", f"num_blocks {NB} * block_size {BS}",
          f"given {value} at index {index}")
      for value, index in [(NUM_SLOTS, 2), (NUM_SLOTS + 100, 0), (2**40, 1)]),
    bad("slot_mapping: below -1", ValueError,
        lambda kv: {"slot_mapping": torch.tensor([0, -2, 3], dtype=torch.int64)},
        "slot_mapping", "[-1, 20)", "given -2 at index 1"),
    bad("slot_mapping: the first bad slot is reported", ValueError,
        lambda kv: {"slot_mapping": torch.tensor([1, 99, -5], dtype=torch.int64)}, "given 99 at index 1"),
    *(bad(f"slot_mapping: dtype {name}", TypeError, lambda kv, d=dtype: {"slot_mapping": SLOTS.to(d)},
          "slot_mapping", "expected dtype int64", f"given {name}")
      for dtype in [torch.int32, torch.int16, torch.float32, torch.uint8]
      for name in [str(dtype).removeprefix("torch.")]),
    bad("slot_mapping: a list", TypeError, lambda kv: {"slot_mapping": [0, 5, 19]},
        "slot_mapping", "expected torch.Tensor", "given list"),
    *(bad(f"slot_mapping: shape {shape}", ValueError,
          lambda kv, sh=shape: {"slot_mapping": torch.zeros(sh, dtype=torch.int64)},
          "slot_mapping", "expected shape [3]", f"given {shape}")
      for shape in [(4,), (2,), (1, 3), ()]),
    bad("slot_mapping: on meta", ValueError, lambda kv: {"slot_mapping": SLOTS.to("meta")},
        "slot_mapping", "expected device cpu", "given meta"),
    # skip_prefix
    *(bad(f"skip_prefix: {skip} out of range", ValueError, lambda kv, k=skip: {"skip_prefix": k},
          "skip_prefix", "expected 0 <= skip_prefix <= 3", f"given {skip}")
      for skip in [-1, 4, 100]),
    *(bad(f"skip_prefix: a {type_name}", TypeError, lambda kv, k=skip: {"skip_prefix": k},
          "skip_prefix", "expected int", f"given {type_name}")
      for skip, type_name in [(1.0, "float"), (True, "bool"), ("1", "str"), (torch.tensor(1), "Tensor"),
                              (None, "NoneType")]),
    # the chunk (out / src)
    bad("chunk: dtype bfloat16", TypeError, lambda kv: {"chunk": chunk(dtype=torch.bfloat16)},
        "<chunk>:", "expected dtype float16", "given bfloat16"),
    *(bad(f"chunk: shape {shape}", ValueError,
          lambda kv, sh=shape: {"chunk": torch.zeros(sh, dtype=torch.float16)},
          "<chunk>:", f"expected shape [2, {L}, num_tokens, {H * D}]", "[num_kv, num_layers, num_tokens, hidden]",
          f"given {shape}")
      for shape in [(2, L, 3, H * D + 1), (1, L, 3, H * D), (2, L + 1, 3, H * D), (2, L, 3 * H * D),
                    (2, L, 3, H, D)]),
    bad("chunk: not contiguous", ValueError,
        lambda kv: {"chunk": torch.zeros(2, L, H * D, 3, dtype=torch.float16).transpose(2, 3)},
        "<chunk>:", "expected a contiguous tensor", f"given strides {NOT_CONTIGUOUS.stride()}"),
    bad("chunk: a numpy array", TypeError, lambda kv: {"chunk": chunk().numpy()},
        "<chunk>:", "expected torch.Tensor", "given numpy.ndarray"),
    bad("chunk: on meta", ValueError, lambda kv: {"chunk": chunk().to("meta")}, "<chunk>", "given meta"),
    # kv_caches
    bad("kv_caches: a dtype differs", TypeError, lambda kv: {"kv_caches": [kv[0], kv[1].to(torch.bfloat16)]},
        "kv_caches[1]", "expected dtype float16", "given bfloat16"),
    bad("kv_caches: a shape differs", ValueError, lambda kv: {"kv_caches": [kv[0][:, :4], kv[1]]},
        "kv_caches[0]", f"expected shape {(2, NB, BS, H, D)}", f"given {(2, 4, BS, H, D)}"),
    # same shape, other memory order (HND memory behind the NHD shape) is not the detected layout
    bad("kv_caches: strides differ", ValueError, lambda kv: {"kv_caches": [kv[0], HND_BEHIND_NHD]},
        "kv_caches[1]", f"expected strides {torch.empty(2, NB, BS, H, D).stride()}",
        f"given {HND_BEHIND_NHD.stride()}"),
    *(bad(f"kv_caches: {count} tensors for 2 layers", ValueError, lambda kv, n=count: {"kv_caches": [kv[0]] * n},
          "kv_caches", "expected 2 tensors", "vllm_flash_nhd", f"({L} layers)", f"given {count}")
      for count in [1, 3]),
    bad("kv_caches: one on another device", ValueError, lambda kv: {"kv_caches": [kv[0], meta_twin(kv[1])]},
        "kv_caches[1]", "expected device cpu", "given meta"),
    bad("kv_caches: all on meta", ValueError, lambda kv: {"kv_caches": [meta_twin(t) for t in kv]},
        "kv_caches", "meta"),
    bad("kv_caches: an entry is a numpy array", TypeError, lambda kv: {"kv_caches": [kv[0], kv[1].numpy()]},
        "kv_caches[1]", "expected torch.Tensor", "given numpy.ndarray"),
    *(bad(f"kv_caches: a {type_name}", TypeError, lambda kv, m=make_bad: {"kv_caches": m(kv)},
          "kv_caches", "expected a list or tuple of tensors", f"given {type_name}")
      for make_bad, type_name in [(torch.stack, "Tensor"), (lambda kv: (t for t in kv), "generator"),
                                  (lambda kv: dict(enumerate(kv)), "dict")]),
]  # fmt: skip


@pytest.mark.parametrize(("exc", "make", "fragments"), BAD_CALLS)
def test_bad_argument_is_named(
    op: tuple[str, Call], exc: type[Exception], make: Make, fragments: tuple[str, ...]
) -> None:
    name, call = op
    kv, layout = nhd()
    a = {"kv_caches": kv, "slot_mapping": SLOTS, "chunk": chunk(), "skip_prefix": 0} | make(kv)
    raises(
        exc,
        lambda: call(layout, a["kv_caches"], a["slot_mapping"], a["chunk"], a["skip_prefix"]),
        *(f.replace("<chunk>", name) for f in fragments),
    )


# ---- slot_mapping ----------------------------------------------------------------------------


def test_skipped_prefix_slots_are_not_checked(op: tuple[str, Call]) -> None:
    """Only live slots are validated; a skipped token's slot may hold anything."""
    name, call = op
    kv, layout = nhd()
    slots = torch.tensor([12345, -9, 4], dtype=torch.int64)
    assert_moved(name, call, kv, layout, slots, 2)  # only token 2 (slot 4) moves


# ---- the chunk (out / src) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("num_tokens", "contiguous"),
    [(1, True), (0, False)],
    ids=["size-1 token axis: its stride is free", "empty chunk: strides still row-major"],
)
def test_chunk_contiguity_is_judged_as_the_array_adapter_does(
    op: tuple[str, Call], num_tokens: int, contiguous: bool
) -> None:
    """The torch path reads the tensor's own metadata (no ArrayInfo); its contiguity test must
    still be :meth:`ArrayInfo.is_contiguous`, also where torch's own differs (empty tensors)."""
    from lmcache_core.arrays import array_info

    name, call = op
    kv, layout = nhd()
    odd = torch.zeros(2, L, H * D, num_tokens, dtype=torch.float16).transpose(2, 3)
    assert array_info(odd).is_contiguous() is contiguous and odd.is_contiguous()  # torch: both
    slots = SLOTS[:num_tokens]
    if contiguous:
        call(layout, kv, slots, odd)
    else:
        raises(ValueError, lambda: call(layout, kv, slots, odd), f"{name}:", "expected a contiguous tensor")


# ---- kv_caches -------------------------------------------------------------------------------


def test_trtllm_layer_count(op: tuple[str, Call]) -> None:
    _, call = op
    tensors, hints = allocate_example(
        "trtllm", num_layers=3, num_blocks=2, block_size=2, num_kv_heads=1, head_size=4, dtype=torch.float32
    )
    layout = detect_layout(tensors, hints)
    src = torch.zeros(2, 3, 1, 4)
    slots = torch.tensor([1])
    raises(
        ValueError,
        lambda: call(layout, tensors * 2, slots, src),
        "expected 1 tensors",
        "(3 layers)",
        "given 2",
    )


def test_kv_tuple_accepted(op: tuple[str, Call]) -> None:
    name, call = op
    kv, layout = nhd()
    assert_moved(name, call, tuple(kv), layout, SLOTS)


# ---- nothing written before a check fails ----------------------------------------------------


def test_bad_slot_leaves_kv_unchanged() -> None:
    kv, layout = nhd()
    before = [t.clone() for t in kv]
    slots = torch.tensor([0, 1, 2, 3, NUM_SLOTS], dtype=torch.int64)  # only the last is bad
    with pytest.raises(ValueError, match="at index 4"):
        reference_backend().scatter(layout, kv, slots, chunk(5))
    for t, b in zip(kv, before, strict=True):
        assert torch.equal(t.view(torch.int16), b.view(torch.int16))


def test_bad_slot_leaves_out_unchanged() -> None:
    kv, layout = nhd()
    out = chunk(5)
    slots = torch.tensor([0, 1, 2, 3, -3], dtype=torch.int64)
    with pytest.raises(ValueError, match="given -3 at index 4"):
        reference_backend().gather(layout, kv, slots, out)
    assert bool((out == 7.0).all())


def test_bad_kv_leaves_out_unchanged() -> None:
    kv, layout = nhd()
    out = chunk()
    with pytest.raises(TypeError):
        reference_backend().gather(layout, [kv[0], kv[1].to(torch.float32)], SLOTS, out)
    assert bool((out == 7.0).all())


# ---- alloc_host ------------------------------------------------------------------------------


@pytest.mark.parametrize("nbytes", [-1, 1.5, True, "8", None])
def test_alloc_host_size(nbytes: Any) -> None:
    raises(
        ValueError,
        lambda: reference_backend().alloc_host(nbytes),
        "nbytes",
        "expected a non-negative int",
        f"given {nbytes!r}",
    )


# ---- backend names ---------------------------------------------------------------------------


def test_unknown_backend_name_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(BACKEND_ENV, raising=False)
    msg = raises(
        ValueError,
        lambda: select_backend("cpu", name="nope"),
        "name: expected one of",
        "'reference'",
        "given 'nope'",
    )
    assert "[" in msg and "]" in msg
    raises(ValueError, lambda: get_backend("cpu", name="nope"), "given 'nope'")


def test_unknown_backend_env_lists_valid_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "nope")
    raises(
        ValueError,
        lambda: select_backend("cpu"),
        f"{BACKEND_ENV}: expected one of",
        "'reference'",
        "given 'nope'",
    )


def test_backend_env_names_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(BACKEND_ENV, "reference")
    selection = select_backend("cpu")
    assert selection.backend is reference_backend()
    assert BACKEND_ENV in selection.why


# ---- the layout against the tensors: every plane inside its tensor's storage -----------------


def hostile(layout: KVLayout, **fields: Any) -> KVLayout:
    """A layout edited by hand, as a caller could with ``dataclasses.replace``."""
    return layout.replace_geometry(**fields)


def guarded_nhd(dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor], KVLayout]:
    """``nhd()``'s two tensors as views inside one larger buffer with guard bytes before and after."""
    per = 2 * NB * BS * H * D
    arena = torch.empty(4 * per, dtype=dtype)
    arena.view(torch.uint8).fill_(0x5A)
    kv = [arena[(1 + i) * per : (2 + i) * per].view(2, NB, BS, H, D) for i in range(L)]
    _, hints = allocate_example(
        "vllm_flash_nhd", num_layers=L, num_blocks=NB, block_size=BS, num_kv_heads=H, head_size=D, dtype=dtype
    )
    return arena, kv, detect_layout(kv, hints)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn], ids=str)
def test_plane_offset_near_2_63_with_large_block_stride(op: tuple[str, Call], dtype: torch.dtype) -> None:
    """Issue 9.1: ``plane_offset + extent`` wrapped in the native check (fp16 wrote before the
    tensor, fp8 crashed). The core now refuses it, naming the field, before any backend runs."""
    name, call = op
    arena, kv, layout = guarded_nhd(dtype)
    bad = hostile(
        layout,
        plane_offset=(2**63 - 64,) * len(layout.plane_offset),
        block_stride=(2**62 + 2**10) // (NB - 1) + 1,
    )
    before = arena.clone()
    c = torch.zeros(2, L, 3, H * D, dtype=dtype)
    c_before = c.clone()
    raises(
        ValueError,
        lambda: call(bad, kv, SLOTS, c),
        "block_stride, token_stride, head_stride, channel_stride: a plane spans",
    )
    raises(
        ValueError,
        lambda: call(hostile(layout, plane_offset=(*layout.plane_offset[:-1], 2**63 - 2)), kv, SLOTS, c),
        f"plane_offset[{2 * L - 1}]: plane {2 * L - 1} (kind v, layer {L - 1}) spans elements "
        f"[{2**63 - 2}, {2**63 - 2} + ",
        "expected to fit in the",
        f"bytes of its storage from its first element ({dtype.itemsize} per element)",
    )
    assert torch.equal(arena.view(torch.uint8), before.view(torch.uint8))
    assert torch.equal(c.view(torch.uint8), c_before.view(torch.uint8)), name


@pytest.mark.parametrize(
    ("fields", "fragments"),
    [
        (
            {"plane_tensor": (0, 1, -1, 1)},
            ("plane_tensor[2]", "expected 0 <= plane_tensor[2] <= 1", "given -1"),
        ),
        ({"plane_tensor": (0, 1, 2, 1)}, ("plane_tensor[2]", "given 2")),
        ({"plane_offset": (0, 0, -1, 0)}, ("plane_offset[2]", "expected 0 <= plane_offset[2]", "given -1")),
        ({"plane_offset": (0, 0, 480, 481)}, ("plane_offset[3]", "spans elements [481, 481 + 480)")),
        ({"element_size": 1}, ("element_size", "expected 2 (bytes per float16 element", "given 1")),
        ({"element_size": 4}, ("element_size", "given 4")),
        (
            {"block_stride": -96},
            ("kinds[0].block_stride", "expected 0 <= kinds[0].block_stride", "given -96"),
        ),
        ({"channel_stride": 2**63}, ("kinds[0].channel[0].stride", f"<= {2**63 - 1}", f"given {2**63}")),
        ({"num_blocks": 0}, ("num_blocks", "expected 1 <= num_blocks", "given 0")),
        (
            {"token_stride": 10**6},
            ("block_stride, token_stride, head_stride, channel_stride", "a plane spans"),
        ),
    ],
)
def test_layout_fields_checked_against_tensors(
    op: tuple[str, Call], fields: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    """plane_tensor=-1, a wrong element_size, negative or huge strides: ValueError naming the field."""
    _, call = op
    kv, layout = nhd()
    before = [t.clone() for t in kv]
    c = chunk()
    raises(ValueError, lambda: call(hostile(layout, **fields), kv, SLOTS, c), *fragments)
    assert bool((c == 7.0).all())
    for t, b in zip(kv, before, strict=True):
        assert torch.equal(t.view(torch.int16), b.view(torch.int16))


def test_layout_field_of_wrong_type(op: tuple[str, Call]) -> None:
    _, call = op
    kv, layout = nhd()
    raises(
        TypeError, lambda: call(hostile(layout, head_stride=8.0), kv, SLOTS, chunk()), "head_stride", "float"
    )


def test_plane_fit_is_checked_once_per_layout_and_tensors(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fit check runs once per (layout, tensors) pair, again for other tensors or another layout."""
    from lmcache_core import validation

    seen: list[KVLayout] = []
    real = validation.check_planes_fit

    def counting(layout: KVLayout, kv_caches: Any) -> None:
        seen.append(layout)
        real(layout, kv_caches)

    monkeypatch.setattr(validation, "check_planes_fit", counting)
    kv, layout = nhd()
    backend = reference_backend()
    for _ in range(3):
        backend.gather(layout, kv, SLOTS, chunk())
    assert seen == [layout]
    other_kv = [t.clone() for t in kv]
    backend.gather(layout, other_kv, SLOTS, chunk())
    moved = hostile(layout, plane_offset=(0, 0, 1, 1), num_blocks=NB - 1)
    backend.gather(moved, kv, SLOTS[:2], chunk(2))
    assert seen == [layout, layout, moved]


def test_numpy_slot_mapping_is_a_type_error(op: tuple[str, Call]) -> None:
    """Issue 9.3: numpy arrays have ``.device`` too; they used to reach ``.dtype`` checks and raise
    AttributeError. The public API takes torch tensors only: TypeError naming the argument."""
    _, call = op
    kv, layout = nhd()
    c = chunk()
    raises(
        TypeError,
        lambda: call(layout, kv, SLOTS.numpy(), c),
        "slot_mapping",
        "expected torch.Tensor",
        "given numpy.ndarray",
    )
    assert bool((c == 7.0).all())
