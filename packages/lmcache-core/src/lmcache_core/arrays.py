"""The one array adapter: what the core reads of an engine's KV arrays, whatever their type.

The core validates and routes through :func:`array_info`, never through a framework's own
methods, so the same checks serve three array families:

* ``"torch"``: ``torch.Tensor`` on any device (in-place kernels);
* ``"numpy"``: ``numpy.ndarray`` in host memory (in-place kernels, or a functional backend);
* ``"jax"``: ``jax.Array``, immutable: only a backend declaring
  :attr:`lmcache_core.plugin_api.Capabilities.functional` can load KV into it (its scatter
  returns new arrays).

Each family is recognised through the module already loaded in :data:`sys.modules`: an object of
a family's type exists only when its module was imported, so this module imports none of them
(JAX in particular is never imported unless the caller already did).

Units: ``shape`` and ``strides`` in elements, ``nbytes``/``reach_bytes`` in bytes.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

#: The array families the core knows. Each is also the name of the module that defines its array
#: type, looked up in sys.modules only, never imported here. (The one line of the core that names
#: JAX: allow-listed in tools/check_neutral.py.)
TORCH, NUMPY, JAX = "torch", "numpy", "jax"
FAMILIES = (TORCH, NUMPY, JAX)
_TYPE_TEXT = {TORCH: "torch.Tensor", NUMPY: "numpy.ndarray", JAX: f"{JAX}.Array"}


@dataclass(frozen=True)
class ArrayInfo:
    """Metadata of one array, read without copying it.

    ``family``: ``"torch"``, ``"numpy"`` or ``"jax"``. ``shape``/``strides``: per axis, strides
    in elements (a JAX array is logically row-major: its strides are the C-contiguous ones).
    ``dtype``: torch-style name (``"bfloat16"``, ``"float8_e4m3fn"``; numpy/JAX dtype names are
    the same text). ``device``: the device in words (``"cpu"``, ``"cuda:0"``, ``"TPU_0"``),
    ``device_type`` its kind (``"cpu"``, ``"cuda"``, ``"tpu"``). ``nbytes``: bytes of the
    elements the shape covers. ``address``: address of element 0 (torch: ``data_ptr()`` on any
    device; numpy: host address; None for JAX, whose buffers the core never touches).
    ``host_address``: ``address`` when it is host memory, else None. ``reach_bytes``: bytes of
    the underlying storage from element 0 to its end (what a layout may index into).
    ``writable``: whether kernels may write it in place.
    """

    family: str
    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: str
    element_size: int
    device: str
    device_type: str
    nbytes: int
    address: int | None
    reach_bytes: int
    writable: bool

    @property
    def host_address(self) -> int | None:
        return self.address if self.device_type == "cpu" else None

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def is_contiguous(self) -> bool:
        """True when the elements are dense and row-major (size-1 axes' strides are free)."""
        return is_contiguous(self.shape, self.strides)


def is_contiguous(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """True when ``strides`` (elements) lay ``shape`` out dense and row-major (size-1 axes' strides
    are free)."""
    expected = contiguous_strides(shape)
    return all(n == 1 or s == c for n, s, c in zip(shape, strides, expected, strict=True))


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements of ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def array_family(obj: object) -> str | None:
    """``"torch"``, ``"numpy"``, ``"jax"`` or None (not an array this core knows)."""
    torch = sys.modules.get(TORCH)
    if torch is not None and isinstance(obj, torch.Tensor):
        return TORCH
    np = sys.modules.get(NUMPY)
    if np is not None and isinstance(obj, np.ndarray):
        return NUMPY
    array_type = getattr(sys.modules.get(JAX), "Array", None)
    if isinstance(array_type, type) and isinstance(obj, array_type):
        return JAX
    return None


def type_text(obj: object) -> str:
    """``torch.Tensor``, ``numpy.ndarray``, ``list``...: the type for messages."""
    family = array_family(obj)
    return _TYPE_TEXT.get(family or "", type(obj).__name__)


def array_info(obj: object, name: str = "array") -> ArrayInfo:
    """:class:`ArrayInfo` of ``obj``; TypeError naming ``name`` when it is not a known array."""
    family = array_family(obj)
    if family == TORCH:
        return _torch_info(obj)
    if family == NUMPY:
        return _numpy_info(obj, name)
    if family == JAX:
        return _jax_info(obj, name)
    raise TypeError(
        f"{name}: expected a torch.Tensor, numpy.ndarray or jax.Array, given {type(obj).__name__}"
    )


#: torch.dtype -> its name without ``torch.`` (filled as dtypes are met; a handful per process)
_TORCH_DTYPE_NAMES: dict[Any, str] = {}


def torch_dtype_name(dtype: Any) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: the dtype text of :attr:`ArrayInfo.dtype` for torch."""
    name = _TORCH_DTYPE_NAMES.get(dtype)
    if name is None:
        name = _TORCH_DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _torch_info(t: Any) -> ArrayInfo:
    size = t.element_size()
    device = t.device
    if device.type == "meta":  # no storage: nothing reachable
        address, reach = None, 0
    else:
        address = int(t.data_ptr())
        reach = t.untyped_storage().nbytes() - t.storage_offset() * size
    return ArrayInfo(
        family=TORCH,
        shape=tuple(t.shape),
        strides=tuple(t.stride()),
        dtype=torch_dtype_name(t.dtype),
        element_size=size,
        device=str(device),
        device_type=device.type,
        nbytes=t.numel() * size,
        address=address,
        reach_bytes=reach,
        writable=True,
    )


def _numpy_info(a: Any, name: str) -> ArrayInfo:
    size = a.dtype.itemsize
    if size == 0 or any(s % size for s in a.strides):
        raise ValueError(
            f"{name}: expected strides that are whole elements of {a.dtype.name} ({size} bytes), "
            f"given byte strides {a.strides}"
        )
    address = int(a.__array_interface__["data"][0])
    # The outermost numpy array above this view bounds what the view may reach.
    ndarray = sys.modules["numpy"].ndarray
    base = a
    while isinstance(base.base, ndarray):
        base = base.base
    base_address = int(base.__array_interface__["data"][0])
    if base.size == 0:
        end = base_address
    else:
        end = (
            base_address
            + base.dtype.itemsize
            + sum((n - 1) * s for n, s in zip(base.shape, base.strides, strict=True) if s > 0)
        )
    return ArrayInfo(
        family=NUMPY,
        shape=tuple(int(n) for n in a.shape),
        strides=tuple(int(s) // size for s in a.strides),
        dtype=a.dtype.name,
        element_size=size,
        device="cpu",
        device_type="cpu",
        nbytes=int(a.nbytes),
        address=address,
        reach_bytes=max(0, end - address),
        writable=bool(a.flags.writeable),
    )


def _jax_info(a: Any, name: str) -> ArrayInfo:
    devices = sorted(a.devices(), key=lambda d: d.id)
    if not devices:
        raise ValueError(f"{name}: expected a jax.Array with a device, given one on none (deleted?)")
    device = devices[0]
    # A sharded array is one logical array (its shape and strides are the global ones); its
    # device in words names every device it spans, so arrays on other meshes compare unequal.
    where = (
        str(device) if len(devices) == 1 else f"{len(devices)} devices {','.join(str(d.id) for d in devices)}"
    )
    shape = tuple(int(n) for n in a.shape)
    size = a.dtype.itemsize
    nbytes = math.prod(shape) * size
    return ArrayInfo(
        family=JAX,
        shape=shape,
        strides=contiguous_strides(shape),
        dtype=a.dtype.name,
        element_size=size,
        device=where,
        device_type=str(device.platform),
        nbytes=nbytes,
        address=None,
        reach_bytes=nbytes,
        writable=False,
    )


def numpy_view(t: Any, dtype: Any) -> Any:
    """Zero-copy numpy view of a host torch tensor ``t`` as numpy ``dtype`` (same bytes, same
    element size; e.g. a bfloat16 chunk as the KV's ``ml_dtypes.bfloat16``). A numpy array is
    returned unchanged when its dtype already is ``dtype``."""
    import numpy as np

    if isinstance(t, np.ndarray):
        return t if t.dtype == np.dtype(dtype) else t.view(dtype)
    import torch

    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().view(bits).numpy().view(dtype)


def torch_twins(kv_caches: Any) -> Any:
    """``kv_caches`` with every numpy/JAX array replaced by a torch tensor on device ``meta`` of
    the same shape, element strides and dtype (no memory), nesting (lists, tuples) kept; torch
    tensors stay as they are. Layout detection reads only this metadata, so the layout registry
    describes any array family through its torch-typed detectors.
    """
    if isinstance(kv_caches, (list, tuple)):
        return type(kv_caches)(torch_twins(t) for t in kv_caches)
    family = array_family(kv_caches)
    if family is None or family == TORCH:
        return kv_caches
    import torch

    info = array_info(kv_caches, "kv_caches")
    dtype = getattr(torch, info.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"kv_caches: expected a KV dtype torch also names, given {family} dtype {info.dtype}")
    return torch.empty_strided(info.shape, info.strides, dtype=dtype, device="meta")
