"""Triton launchers run on their tensors' CUDA device (Triton itself launches on the current one)."""
import importlib
import pkgutil

import pytest
import torch

import noisefast.ops
from noisefast._library import Kernels
from noisefast.triton.device import on_tensor_device


def _triton_launchers():
    found = {}
    for info in pkgutil.iter_modules(noisefast.ops.__path__):
        module = importlib.import_module(f"noisefast.ops.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Kernels) and value.modules["triton"]:
                found[f"{value.modules['triton']}:{value.name}"] = value.implementation("triton")
    return found


def test_every_triton_launcher_switches_to_the_tensors_device():
    launchers = _triton_launchers()
    assert len(launchers) >= 10, sorted(launchers)
    unguarded = [path for path, fn in launchers.items() if getattr(fn, "__wrapped__", None) is None]
    assert not unguarded, f"Triton launchers without @on_tensor_device: {unguarded}"


def test_guard_passes_cpu_calls_through():
    seen = []
    guarded = on_tensor_device(lambda *args, **kwargs: seen.append((args, kwargs)) or "result")
    x = torch.zeros(2)
    assert guarded(x, 3, k=1) == "result" and seen == [((x, 3), {"k": 1})]


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_triton_on_the_second_gpu_while_the_first_is_current():
    import noisefast

    x = torch.zeros(1 << 16, device="cuda:1")
    seed = torch.tensor([5], device="cuda:1")
    with torch.cuda.device(0), noisefast.use_backend("triton"):
        z = torch.ops.noisefast.gaussian_noise(x, seed, 1.0, None, 1)
        torch.cuda.synchronize(1)
    with torch.cuda.device(1), noisefast.use_backend("triton"):
        expected = torch.ops.noisefast.gaussian_noise(x, seed, 1.0, None, 1)
    assert z.device == x.device and torch.equal(z, expected)
