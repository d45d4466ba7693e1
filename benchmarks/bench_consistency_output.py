"""The consistency-model output: noisefast.consistency_output against what users write today.

eager:     openai/consistency_models' denoise: the scalings of each sample's sigma, then
           c_out * raw + c_skip * x (two scalings and an add, each a full pass with a temporary)
compile:   torch.compile of that same function
noisefast: one pass forward (raw and x read once, the output written once); backward writes
           grad_raw = c_out * g in one pass

Passes: the forward alone, and forward + backward with the gradient to raw (the network's output;
x, the noisy input, needs none). Samples are [3, 32, 32]; sizes count elements. Bytes the fused op
must move: forward reads raw and x and writes the output (3 N); forward + backward also reads g and
writes grad_raw (5 N).
"""
import pytest
import torch

from noisefast.ops.consistency_output import consistency_output
from noisefast.reference.consistency_output import consistency_output_eager

from .common import PROVIDERS, bench_device, compiled, element_size, measure, sizes

SAMPLE = (3, 32, 32)
D = 3 * 32 * 32
NUMELS = sizes(cpu=[1 << 16, 1 << 20, 1 << 22], cuda=[1 << 20, 1 << 24, 1 << 26])


def _output_fn(provider: str, dtype: torch.dtype):
    if provider == "noisefast":
        return consistency_output
    if provider == "compile":
        return compiled(consistency_output_eager, ("consistency_output", dtype))
    return consistency_output_eager


@pytest.mark.parametrize("numel", NUMELS, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_consistency_output(benchmark, provider, pass_, dtype, numel):
    device = bench_device()
    samples = max(1, numel // D)
    gen = torch.Generator(device=device).manual_seed(0)
    raw = torch.randn((samples,) + SAMPLE, device=device, dtype=dtype, generator=gen)
    x = torch.randn((samples,) + SAMPLE, device=device, dtype=dtype, generator=gen)
    sigma = torch.rand(samples, device=device, generator=gen) * 80
    output_fn = _output_fn(provider, dtype)
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                return output_fn(raw, x, sigma)
        moved = 3
    else:
        raw.requires_grad_()
        grad = torch.randn_like(raw)

        def fn():
            return torch.autograd.grad(output_fn(raw, x, sigma), raw, grad)
        moved = 5
    n = raw.numel()
    measure(benchmark, fn, op="consistency_output", provider=provider, numel=n, dtype=dtype,
            bytes_moved=moved * n * element_size(dtype), pass_=pass_)
