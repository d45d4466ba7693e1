"""Noise added in place to a list of tensors (gradient noise, weight perturbation):
noisefast.foreach_gaussian_noise_ against what users write today.

eager:     for t in ts: t.add_(torch.randn_like(t), alpha=std)   (a noise tensor per tensor, two
           kernels per tensor)
compile:   torch.compile of that loop (Inductor fuses randn and add per tensor)
noisefast: foreach_gaussian_noise_(ts, std): one pass over all tensors (a few multi-tensor CUDA
           launches; one parallel loop on the CPU), the noise never stored

Model: the transformer-like list of 300 tensors of bench_ema_update.py (50 blocks of a norm weight, qkv
weight and bias, projection and two MLP matrices): ~8M and ~32M elements on a GPU, ~2M and ~8M on
the CPU; float32 and bfloat16. Bytes that must move: every tensor read and written once,
2 * numel * element_size.
"""
import pytest
import torch

from noisefast.ops.foreach_gaussian_noise import foreach_gaussian_noise_

from .bench_ema_update import model_sizes
from .common import bench_device, compiled, element_size, measure, sizes

STD = 0.01
# Widths d of model_sizes (12 d^2 + 4 d elements per block, 50 blocks): 58 -> 2.0M, 116 -> 8.1M,
# 231 -> 32M elements.
WIDTHS = sizes(cpu=[58, 116], cuda=[116, 231])


def eager_step(ts):
    for t in ts:
        t.add_(torch.randn_like(t), alpha=STD)


def noisefast_step(ts):
    foreach_gaussian_noise_(ts, STD)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_foreach_gaussian_noise_(benchmark, provider, dtype, width):
    device = bench_device()
    torch.manual_seed(0)
    ts = [torch.randn(n, device=device).to(dtype) for n in model_sizes(width)]
    fns = {
        "eager": lambda: eager_step(ts),
        "compile": lambda: compiled(eager_step, ("foreach_gaussian_noise_", dtype, width))(ts),
        "noisefast": lambda: noisefast_step(ts),
    }
    numel = sum(t.numel() for t in ts)
    measure(benchmark, fns[provider], op="foreach_gaussian_noise_", provider=provider, numel=numel, dtype=dtype,
            bytes_moved=2 * numel * element_size(dtype), tensors=len(ts))
