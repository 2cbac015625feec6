"""What a backend plugin provides: its probe result, its capabilities, the API version.

A backend package exposes two objects:

1. a **probe**, named by an entry point in the group ``lmcache_core.backends``
   (entry name = backend name). The probe is a cheap callable taking no argument and returning a
   :class:`BackendProbe`. Its module must import nothing heavy (no torch, no vendor SDK) unless
   it needs it to answer, and it must not raise for an ordinary "not here" answer;
2. a **plugin module** (``BackendProbe.plugin``, a dotted path), whose functions carry
   ``@hookimpl`` and implement the hookspecs in :mod:`lmcache_core.hookspecs`.

This module imports neither torch nor pluggy (:func:`supported_dtypes` imports torch when called).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Version of the backend hook API: (major, minor). A plugin built against (M, m) loads when
#: M equals the core's major and m is at most the core's minor.
#: 1.1 added ``lmcache_current_stream``, ``lmcache_stream_wait_event``, ``lmcache_query_event``
#: and ``lmcache_destroy_stream``; a 1.0 plugin without them still loads, and the core orders its
#: copies after the forward by a host wait instead (:class:`lmcache_core.backend.Backend`).
API_VERSION: tuple[int, int] = (1, 1)

#: The hook API versions a plugin can be built against; its ``lmcache_api_version`` returns one.
#: 1.0: identity, kernel, host-memory, stream, event and synchronize hooks.
API_1_0: tuple[int, int] = (1, 0)
#: 1.1: 1.0 plus the device-side ordering hooks named above.
API_1_1: tuple[int, int] = (1, 1)

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
    """

    available: bool
    reason: str
    priority: int = Priority.REFERENCE
    device_types: tuple[str, ...] = ("*",)
    plugin: str | None = None

    def serves(self, device_type: str) -> bool:
        """True when this backend moves KV that lives on ``device_type``."""
        return "*" in self.device_types or device_type in self.device_types


@dataclass(frozen=True)
class Capabilities:
    """What a backend's kernels cover; the core routes anything else to the reference backend.

    ``layouts`` and ``dtypes`` hold registry kind names and torch dtype names
    (``"bfloat16"``); ``"*"`` means all. ``pinned_host`` says whether ``lmcache_alloc_host`` can
    return page-locked memory. ``status`` is the text ``lmcache-core info`` shows, e.g.
    ``"compiled, no device"``.
    """

    layouts: frozenset[str] = frozenset({"*"})
    dtypes: frozenset[str] = frozenset({"*"})
    pinned_host: bool = False
    status: str = "ok"
    extra: dict[str, str] = field(default_factory=dict)

    def covers(self, layout_kind: str, dtype: str) -> bool:
        """True when the backend's own kernels handle ``layout_kind`` in ``dtype``."""
        return ("*" in self.layouts or layout_kind in self.layouts) and (
            "*" in self.dtypes or dtype in self.dtypes
        )


def check_api_version(plugin_name: str, built_against: object) -> None:
    """Raise ImportError listing built-against and supported versions when they do not fit."""
    ok = (
        isinstance(built_against, tuple)
        and len(built_against) == 2
        and all(isinstance(v, int) for v in built_against)
        and built_against[0] == API_VERSION[0]
        and built_against[1] <= API_VERSION[1]
    )
    if not ok:
        raise ImportError(
            f"backend {plugin_name!r}: built against lmcache-core backend API {built_against!r}; "
            f"this lmcache-core supports ({API_VERSION[0]}, 0) to {API_VERSION}. "
            f"Install matching versions of lmcache-core and the plugin."
        )


def supported_dtypes() -> frozenset[str]:
    """Names (``"bfloat16"``) of :data:`KV_DTYPE_NAMES` that the installed torch has."""
    import torch

    return frozenset(n for n in KV_DTYPE_NAMES if isinstance(getattr(torch, n, None), torch.dtype))
