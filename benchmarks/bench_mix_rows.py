"""mixup's mixing pass: lam * x + (1 - lam) * x[perm] over a batch.

eager:     lam * x + (1 - lam) * x[index, :]  (facebookresearch/mixup-cifar10's mixup_data): a gather
           copy, two scalings and an add, each a full pass with its own temporary
compile:   torch.compile of that same function
noisefast: noisefast::mix_rows, one pass (each row read as itself and as a partner, written once)

Bytes the op must move: x read twice (itself and the partner rows) and the output written once.
The random draws (lam, the permutation) are outside the timing: they are a few hundred bytes.
"""
import pytest
import torch

from noisefast.ops.mix_rows import mix_rows
from noisefast.reference.mix_rows import mixup_inputs

from .common import bench_device, compiled, element_size, measure, sizes

SIZES = sizes(cpu=[1 << 16, 1 << 20, 1 << 22], cuda=[1 << 20, 1 << 24, 1 << 26])
DTYPES = [torch.float32, torch.bfloat16]
BATCH = 256


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_mix_rows(benchmark, provider, numel, dtype):
    device = bench_device()
    x = torch.randn(BATCH, numel // BATCH, device=device).to(dtype)
    index = torch.randperm(BATCH, device=device)
    lam = 0.3
    lam_tensor = torch.tensor(lam, dtype=torch.float64, device=device)  # what noisefast.mixup hands the op
    fns = {
        "eager": lambda: mixup_inputs(x, index, lam),
        "compile": lambda: compiled(mixup_inputs, ("mixup_inputs",))(x, index, lam),
        "noisefast": lambda: mix_rows(x, index, lam_tensor),
    }
    measure(benchmark, fns[provider], op="mix_rows", provider=provider, numel=numel, dtype=dtype,
            bytes_moved=3 * numel * element_size(dtype), batch=BATCH)
