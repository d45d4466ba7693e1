"""Noise stream and noise injection: noisefast.randn and noisefast.gaussian_noise.

eager:   torch.randn / x + std * torch.randn_like(x)   (what users write today)
compile: torch.compile of the same function
noisefast: one fused pass (the noise is never written to memory)
"""
import pytest
import torch

import noisefast

from .common import bench_device, compiled, element_size, measure, sizes

SIZES = sizes(cpu=[1 << 16, 1 << 20, 1 << 22], cuda=[1 << 20, 1 << 24, 1 << 26])
DTYPES = [torch.float32, torch.bfloat16]


def eager_gaussian_noise(x, std: float):
    return x + std * torch.randn_like(x)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_gaussian_noise(benchmark, provider, numel, dtype):
    device = bench_device()
    x = torch.randn(numel, device=device).to(dtype)
    fns = {
        "eager": lambda: eager_gaussian_noise(x, 0.1),
        "compile": lambda: compiled(eager_gaussian_noise, ("gaussian_noise",))(x, 0.1),
        "noisefast": lambda: noisefast.gaussian_noise(x, 0.1),
    }
    measure(benchmark, fns[provider], op="gaussian_noise", provider=provider, numel=numel, dtype=dtype,
            bytes_moved=2 * numel * element_size(dtype), headline=dtype == torch.float32 and numel == SIZES[1])


def eager_randn(numel: int, device, dtype):
    return torch.randn(numel, device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32], ids=["float32"])
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_randn(benchmark, provider, numel, dtype):
    device = bench_device()
    fns = {
        "eager": lambda: eager_randn(numel, device, dtype),
        "compile": lambda: compiled(eager_randn, ("randn",))(numel, device, dtype),
        "noisefast": lambda: noisefast.randn(numel, seed=1, device=device, dtype=dtype),
    }
    measure(benchmark, fns[provider], op="randn", provider=provider, numel=numel, dtype=dtype,
            bytes_moved=numel * element_size(dtype))
