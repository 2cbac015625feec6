"""Loading a GPU backend checks device architectures against the build without a GPU context
(``lmcache_gpu.plugin.arch_runs``), and names every GPU without code in one message
(``missing_images``); the runtime's kernel-image query runs only at registration, on the KV's
device."""

from __future__ import annotations

import pytest

from lmcache_gpu.plugin import arch_runs, missing_images

BUILD = ("sm_80", "sm_90", "compute_90")  # the default lmcache-cuda build


@pytest.mark.parametrize(
    ("device", "archs", "runs"),
    [
        ("sm_80", BUILD, True),  # A100: its binary
        ("sm_86", BUILD, True),  # A10/3090: sm_80 binary, same major
        ("sm_89", BUILD, True),  # L4/4090
        ("sm_90", BUILD, True),  # H100/H200
        ("sm_100", BUILD, True),  # B200: PTX compute_90 JIT-compiles
        ("sm_75", BUILD, False),  # T4: older than every binary and the PTX
        ("sm_75", ("sm_80",), False),
        ("sm_100", ("sm_80", "sm_90"), False),  # no PTX: a newer major has no code
        ("sm_90", ("sm_90a",), True),  # arch-specific binary: its own arch only
        ("sm_100", ("sm_90a", "compute_90a"), False),
        ("sm_90", ("native",), True),  # CMake resolved it; the registration check decides
        ("gfx90a", ("gfx90a",), True),
        ("gfx90a:sramecc+:xnack-", ("gfx90a",), True),
        ("gfx942", ("gfx90a",), False),
    ],
)
def test_arch_runs(device: str, archs: tuple[str, ...], runs: bool) -> None:
    assert arch_runs(device, archs) is runs


def test_every_gpu_without_code_is_named_in_one_message() -> None:
    devices = [
        {"name": "NVIDIA H100 80GB HBM3", "arch": "sm_90"},
        {"name": "Tesla T4", "arch": "sm_75"},
        {"name": "NVIDIA A100-SXM4-80GB", "arch": "sm_80"},
        {"name": "Tesla T4", "arch": "sm_75"},
    ]
    assert missing_images(devices, BUILD) == "GPU 1 (Tesla T4, sm_75), GPU 3 (Tesla T4, sm_75)"
    assert missing_images(devices[::2], BUILD) == ""
    assert missing_images([{"name": "MI300X", "arch": "gfx942"}], ("gfx90a",)) == "GPU 0 (MI300X, gfx942)"
