"""Noise injection: noisefast.gaussian_noise against what users write today.

eager:     x + std * torch.randn_like(x)   (a noise tensor written and read back)
compile:   torch.compile of the same function
noisefast: one fused pass (the noise is never written to memory)

Bytes the op must move: x read and the output written once, 2 * numel * element_size.
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
