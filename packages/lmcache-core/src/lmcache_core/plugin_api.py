"""What a backend plugin provides: its probe result, its capabilities, the API version.

A backend package exposes two objects:

1. a **probe**, named by an entry point in the group ``lmcache_core.backends``
   (entry name = backend name). The probe is a cheap callable taking no argument and returning a
   :class:`BackendProbe`. Its module must import nothing heavy (no torch, no vendor SDK) unless
   it needs it to answer, and it must not raise for an ordinary "not here" answer;
2. a **plugin module** (``BackendProbe.plugin``, a dotted path), whose functions carry
   ``@hookimpl`` and implement the hookspecs in :mod:`lmcache_core.hookspecs`.

This module imports neither torch nor pluggy (:func:`supported_dtypes` imports torch when called);
:mod:`lmcache_core.arrays`, which it names the array families from, imports neither either.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lmcache_core.arrays import FAMILIES, JAX

#: Version of the backend hook API: (major, minor). A plugin built against (M, m) loads when
#: M equals the core's major and m is at most the core's minor.
#: 1.1 added ``lmcache_current_stream``, ``lmcache_stream_wait_event``, ``lmcache_query_event``
#: and ``lmcache_destroy_stream``; a 1.0 plugin without them still loads, and the core orders its
#: copies after the forward by a host wait instead (:class:`lmcache_core.backend.Backend`).
#: 1.2 added arrays that are not torch tensors and functional backends
#: (:attr:`Capabilities.arrays`, :attr:`Capabilities.functional`, :attr:`BackendProbe.array_types`);
#: 1.0 and 1.1 plugins move torch tensors in place, as before, and keep loading.
API_VERSION: tuple[int, int] = (1, 2)

#: The hook API versions a plugin can be built against; its ``lmcache_api_version`` returns one.
#: 1.0: identity, kernel, host-memory, stream, event and synchronize hooks.
API_1_0: tuple[int, int] = (1, 0)
#: 1.1: 1.0 plus the device-side ordering hooks named above.
API_1_1: tuple[int, int] = (1, 1)
#: 1.2: 1.1 plus numpy/JAX arrays and functional scatter (``lmcache_scatter`` returns new arrays).
API_1_2: tuple[int, int] = (1, 2)

#: Array families (:mod:`lmcache_core.arrays`) a backend may move: torch tensors, numpy arrays,
#: JAX arrays. A plugin built against API < 1.2 moves torch tensors only.
ARRAY_FAMILIES: tuple[str, ...] = FAMILIES

#: Torch dtype names a bitwise copy kernel can move: every element size of 1, 2, 4 or 8 bytes.
#: Native backends declare the ones their torch build has (:func:`supported_dtypes`).
KV_DTYPE_NAMES: tuple[str, ...] = (
    # 1 byte
    "float8_e4m3fn",
    "float8_e4m3fnuz",
    "float8_e5m2",
    "float8_e5m2fnuz",
    "int8",
    "uint8",
    # 2 bytes
    "float16",
    "bfloat16",
    "int16",
    "uint16",
    # 4 bytes
    "float32",
    "int32",
    "uint32",
    # 8 bytes
    "float64",
    "int64",
    "uint64",
)

#: Entry-point group that backend packages register their probe under.
BACKENDS_GROUP = "lmcache_core.backends"

#: Environment variable naming the backend to use instead of the automatic choice.
BACKEND_ENV = "LMCACHE_BACKEND"


class Priority:
    """Numeric priorities: the highest available backend for the KV's device wins."""

    REFERENCE = 0  # pure PyTorch, every device: the fallback and the test oracle
    NATIVE_HOST = 50  # native host-memory kernels (lmcache-arm)
    ACCELERATOR = 100  # device kernels (lmcache-cuda, -rocm, -ascend, -tpu)


@dataclass(frozen=True)
class BackendProbe:
    """A probe's answer.

    ``device_types`` are the torch device types whose KV the backend moves, e.g.
    ``("cuda",)`` for lmcache-cuda (ROCm torch reports "cuda" too), ``("npu",)``,
    ``("cpu",)`` for lmcache-arm, ``("*",)`` for every device.
    ``plugin`` is the dotted path of the hookimpl module, ``None`` when not available.
    ``array_types`` are the array families (:data:`ARRAY_FAMILIES`) whose KV it moves:
    ``("torch",)`` (the default, and all a plugin built against API < 1.2 can move),
    ``("numpy",)`` for a host numpy backend, ``("jax",)`` for lmcache-tpu.
    """

    available: bool
    reason: str
    priority: int = Priority.REFERENCE
    device_types: tuple[str, ...] = ("*",)
    plugin: str | None = None
    array_types: tuple[str, ...] = ("torch",)

    def serves(self, device_type: str, array_type: str = "torch") -> bool:
        """True when this backend moves KV of family ``array_type`` that lives on ``device_type``."""
        return ("*" in self.device_types or device_type in self.device_types) and (
            array_type in self.array_types
        )


@dataclass(frozen=True)
class Capabilities:
    """What a backend's kernels cover; the core routes anything else to the reference backend.

    ``layouts`` and ``dtypes`` hold registry kind names and torch dtype names
    (``"bfloat16"``); ``"*"`` means all. ``pinned_host`` says whether ``lmcache_alloc_host`` can
    return page-locked memory. ``status`` is the text ``lmcache-core info`` shows, e.g.
    ``"compiled, no device"``.

    API 1.2: ``arrays`` names the array families the kernels move (:data:`ARRAY_FAMILIES`;
    ``{"torch"}`` by default). ``functional``: the backend never writes the engine's KV in place;
    its ``lmcache_scatter`` returns the updated KV arrays (required for immutable JAX arrays), and
    :meth:`lmcache_core.cache_engine.CacheEngine.retrieve` hands them back in its result.
    """

    layouts: frozenset[str] = frozenset({"*"})
    dtypes: frozenset[str] = frozenset({"*"})
    pinned_host: bool = False
    status: str = "ok"
    extra: dict[str, str] = field(default_factory=dict)
    arrays: frozenset[str] = frozenset({"torch"})
    functional: bool = False

    def covers(self, layout_kind: str, dtype: str, array_type: str = "torch") -> bool:
        """True when the backend's own kernels handle ``layout_kind`` in ``dtype`` for arrays of
        family ``array_type``."""
        return (
            ("*" in self.layouts or layout_kind in self.layouts)
            and ("*" in self.dtypes or dtype in self.dtypes)
            and array_type in self.arrays
        )


def check_api_version(plugin_name: str, built_against: object) -> None:
    """Raise ImportError saying what to change when ``built_against`` does not fit this core.

    The message lists the version the plugin was built against and the range this core supports,
    and says which side must move: a plugin of an older major is rebuilt against this core's API
    (its hooks and ``lmcache_api_version`` updated), one of a newer version needs a newer core.
    """
    supported = f"this lmcache-core supports backend API ({API_VERSION[0]}, 0) to {API_VERSION}"
    well_formed = (
        isinstance(built_against, tuple)
        and len(built_against) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in built_against)
    )
    if not well_formed:
        raise ImportError(
            f"backend {plugin_name!r}: lmcache_api_version returned {built_against!r}, expected a "
            f"(major, minor) tuple of ints; {supported}. Return lmcache_core.plugin_api.API_VERSION "
            f"(or the API_1_x the plugin was written for) from its lmcache_api_version hook."
        )
    assert isinstance(built_against, tuple)
    major, minor = built_against
    if major < API_VERSION[0]:
        raise ImportError(
            f"backend {plugin_name!r}: built against lmcache-core backend API {built_against!r}, older "
            f"than every version {supported}. The plugin must be ported: implement the hooks of "
            f"lmcache_core.hookspecs (identity, kernels, device memory, streams), return "
            f"lmcache_core.plugin_api.API_VERSION from lmcache_api_version, and reinstall it."
        )
    if major > API_VERSION[0] or minor > API_VERSION[1]:
        raise ImportError(
            f"backend {plugin_name!r}: built against lmcache-core backend API {built_against!r}, newer "
            f"than this core; {supported}. Install a newer lmcache-core (or a plugin version made for "
            f"this one)."
        )


def check_capabilities(plugin_name: str, built_against: tuple[int, int], caps: Capabilities) -> None:
    """Raise ImportError when ``caps`` use what the plugin's API version does not have.

    ``arrays`` other than torch and ``functional`` need API 1.2: a 1.0/1.1 plugin that declares
    them must return :data:`API_1_2` (or newer) from ``lmcache_api_version``. Unknown families
    are named with the valid ones.
    """
    unknown = sorted(set(caps.arrays) - set(ARRAY_FAMILIES))
    if unknown or not caps.arrays:
        raise ImportError(
            f"backend {plugin_name!r}: Capabilities.arrays: expected a non-empty subset of "
            f"{list(ARRAY_FAMILIES)}, given {sorted(caps.arrays)}"
        )
    needs = [
        what
        for what, used in (
            (f"Capabilities.arrays={sorted(caps.arrays)}", caps.arrays != frozenset({"torch"})),
            ("Capabilities.functional=True", caps.functional),
        )
        if used
    ]
    if needs and tuple(built_against) < API_1_2:
        raise ImportError(
            f"backend {plugin_name!r}: declares {' and '.join(needs)}, which need backend API "
            f"{API_1_2}, but its lmcache_api_version returns {tuple(built_against)}. Return "
            f"lmcache_core.plugin_api.API_1_2 (or API_VERSION) from lmcache_api_version."
        )
    if JAX in caps.arrays and not caps.functional:
        raise ImportError(
            f"backend {plugin_name!r}: declares Capabilities.arrays with {JAX} but functional=False; "
            "JAX arrays are immutable, so its lmcache_scatter must return new arrays: set "
            "Capabilities(functional=True)"
        )


def supported_dtypes() -> frozenset[str]:
    """Names (``"bfloat16"``) of :data:`KV_DTYPE_NAMES` that the installed torch has."""
    import torch

    return frozenset(n for n in KV_DTYPE_NAMES if isinstance(getattr(torch, n, None), torch.dtype))
