"""The noise stream written to memory: noisefast.randn against torch.randn.

eager:     torch.randn
compile:   torch.compile of the same function
noisefast: the portable stream (Philox4x32-10, Box-Muller), the same numbers on every backend

Bytes the op must move: the output written once, numel * element_size.
"""
import pytest
import torch

import noisefast

from .common import bench_device, compiled, element_size, measure, sizes

SIZES = sizes(cpu=[1 << 16, 1 << 20, 1 << 22], cuda=[1 << 20, 1 << 24, 1 << 26])


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
