"""The array adapter (lmcache_core.arrays): torch tensors, numpy arrays, JAX arrays, one description."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from lmcache_core.arrays import (
    ArrayInfo,
    array_family,
    array_info,
    contiguous_strides,
    numpy_view,
    torch_twins,
    type_text,
)


def test_torch_tensor() -> None:
    t = torch.zeros(4, 3, 5, dtype=torch.bfloat16)
    info = array_info(t)
    assert info == ArrayInfo(
        family="torch",
        shape=(4, 3, 5),
        strides=(15, 5, 1),
        dtype="bfloat16",
        element_size=2,
        device="cpu",
        device_type="cpu",
        nbytes=120,
        address=t.data_ptr(),
        reach_bytes=120,
        writable=True,
    )
    assert info.host_address == t.data_ptr() and info.is_contiguous()


def test_torch_view_reaches_the_rest_of_its_storage() -> None:
    base = torch.zeros(2, 6, 4, dtype=torch.float32)
    view = base[1].permute(1, 0)  # storage offset 24 elements, strides (1, 4)
    info = array_info(view)
    assert info.strides == (1, 4) and not info.is_contiguous()
    assert info.reach_bytes == (48 - 24) * 4
    assert info.address == base.data_ptr() + 24 * 4


def test_meta_tensor_has_no_address() -> None:
    info = array_info(torch.empty(3, 2, device="meta"))
    assert (info.address, info.host_address, info.reach_bytes, info.device_type) == (None, None, 0, "meta")


def test_numpy_array_strides_in_elements_and_reach_of_a_view() -> None:
    a = np.zeros((4, 3, 5), np.float32)
    info = array_info(a)
    assert (info.family, info.shape, info.strides, info.dtype, info.nbytes) == (
        "numpy",
        (4, 3, 5),
        (15, 5, 1),
        "float32",
        240,
    )
    assert info.host_address == a.__array_interface__["data"][0] and info.writable
    view = a[1:, :, ::2].transpose(2, 0, 1)
    vinfo = array_info(view)
    assert vinfo.strides == (2, 15, 5) and vinfo.shape == (3, 3, 3)
    assert vinfo.reach_bytes == 240 - 15 * 4  # from element [1, 0, 0] to the end of the base array
    assert not vinfo.is_contiguous()


def test_numpy_read_only_and_odd_strides() -> None:
    a = np.zeros(8, np.float32)
    a.setflags(write=False)
    assert not array_info(a).writable
    odd = np.zeros(9, np.uint8)[1:].view(np.float32)  # 4-byte elements at an odd address: fine
    assert array_info(odd).strides == (1,)
    packed = np.ndarray(shape=(2,), dtype=np.float32, buffer=np.zeros(12, np.uint8), strides=(6,))
    with pytest.raises(
        ValueError, match=r"kv: expected strides that are whole elements of float32 \(4 bytes\)"
    ):
        array_info(packed, "kv")


def test_size_one_axes_do_not_break_contiguity() -> None:
    t = torch.zeros(4, 1, 5).as_strided((4, 1, 5), (5, 99, 1))
    assert array_info(t).is_contiguous()
    assert contiguous_strides((2, 0, 3)) == (3, 3, 1)


@pytest.mark.parametrize("value", [[1, 2], 3.0, "kv", None])
def test_not_an_array(value: object) -> None:
    assert array_family(value) is None
    with pytest.raises(
        TypeError,
        match=rf"kv_caches\[2\]: expected a torch.Tensor, numpy.ndarray or jax.Array, given {type(value).__name__}",
    ):
        array_info(value, "kv_caches[2]")
    assert type_text(value) == type(value).__name__
    assert type_text(np.zeros(1)) == "numpy.ndarray" and type_text(torch.zeros(1)) == "torch.Tensor"


def test_numpy_view_shares_memory() -> None:
    chunk = torch.zeros(2, 3, dtype=torch.float16)
    view = numpy_view(chunk, np.float16)
    view[1, 2] = 5.0
    assert float(chunk[1, 2]) == 5.0
    same = np.zeros(3, np.float32)
    assert numpy_view(same, np.float32) is same


def test_torch_twins_keep_metadata_and_nesting() -> None:
    a = np.zeros((2, 5, 4, 3, 8), np.float16).transpose(0, 1, 3, 2, 4)
    t = torch.zeros(2, 2)
    twins = torch_twins([a, (a, t)])
    assert isinstance(twins, list) and isinstance(twins[1], tuple)
    assert twins[1][1] is t
    twin = twins[0]
    assert twin.device.type == "meta" and twin.dtype == torch.float16
    assert tuple(twin.shape) == a.shape and twin.stride() == array_info(a).strides


def test_importing_and_using_the_adapter_never_imports_jax() -> None:
    code = (
        "import sys, json, numpy as np, torch\n"
        "from lmcache_core.arrays import array_info, array_family\n"
        "array_info(np.zeros(3)); array_info(torch.zeros(3)); array_family(object())\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_jax_array() -> None:
    """Runs where JAX is installed (the TPU issue installs it); skipped here otherwise."""
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed (lmcache-tpu's tests install it)")
    a = jnp.zeros((4, 3), dtype=jnp.float32)
    info = array_info(a, "kv")
    assert (info.family, info.shape, info.strides, info.dtype, info.nbytes) == (
        "jax",
        (4, 3),
        (3, 1),
        "float32",
        48,
    )
    assert info.address is None and info.host_address is None and not info.writable
    assert info.device_type == "cpu"
    assert tuple(torch_twins(a).shape) == (4, 3)
