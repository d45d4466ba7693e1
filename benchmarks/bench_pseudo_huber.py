"""pseudo_huber_loss: noisefast against the two eager styles users write, and torch.compile of each.

Forms: "per_sample" (the paper's metric; eager baseline = locuslab/ect's code) and "per_element"
(eager baseline = Kinyugo/consistency_models and the diffusers CT example). Passes: the forward
alone, and forward + backward (gradient to input; the target is a stop-gradient, as in iCT).
Samples are [4, 32, 32] (D = 4096); sizes count elements.

Bytes the fused op must move: forward reads input and target (2 N elements); forward + backward
also reads them again and writes grad_input (5 N). Run: pytest benchmarks/bench_pseudo_huber.py
"""
import pytest
import torch

from noisefast.ops.pseudo_huber import pseudo_huber_loss
from noisefast.reference import pseudo_huber as ref

from .common import PROVIDERS, bench_device, compiled, element_size, measure, sizes

D_SHAPE = (4, 32, 32)
D = 4 * 32 * 32
NUMELS = sizes(cpu=[100_000, 1_000_000, 4_000_000], cuda=[1_000_000, 10_000_000, 64_000_000])
EAGER = {"per_sample": ref.pseudo_huber_loss_ect, "per_element": ref.pseudo_huber_loss_elementwise}


def _loss_fn(provider: str, form: str, dtype: torch.dtype):
    if provider == "noisefast":
        per_sample = form == "per_sample"
        return lambda a, b: pseudo_huber_loss(a, b, per_sample=per_sample)
    if provider == "compile":
        return compiled(EAGER[form], ("pseudo_huber", form, dtype))
    return EAGER[form]


@pytest.mark.parametrize("numel", NUMELS, ids=lambda n: f"{n:.0e}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("form", ["per_sample", "per_element"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_pseudo_huber(benchmark, provider, form, pass_, dtype, numel):
    device = bench_device()
    samples = max(1, numel // D)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((samples,) + D_SHAPE, device=device, dtype=dtype, generator=gen)
    b = torch.randn((samples,) + D_SHAPE, device=device, dtype=dtype, generator=gen)
    loss_fn = _loss_fn(provider, form, dtype)
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                return loss_fn(a, b)
        moved = 2
    else:
        a.requires_grad_()

        def fn():
            return torch.autograd.grad(loss_fn(a, b), a)
        moved = 5
    n = a.numel()
    measure(benchmark, fn, op="pseudo_huber_loss", provider=provider, numel=n, dtype=dtype,
            bytes_moved=moved * n * element_size(dtype), form=form, pass_=pass_,
            headline=(form, pass_, dtype, numel) == ("per_sample", "fwd_bwd", torch.float32, NUMELS[1]))
