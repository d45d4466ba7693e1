"""EMA of model weights: noisefast.ema_update_ / ema_update_multi_ against what users write today.

eager:     the per-parameter loop of most training scripts, e.mul_(d).add_(x, alpha=1 - d)
foreach:   torch._foreach_lerp_ (one horizontally fused kernel per dtype group on CUDA; bf16
           weights converted to float32 first, as foreach_lerp needs equal dtypes)
compile:   torch.compile of the foreach form (conversion and lerp fused by Inductor)
noisefast: one fused pass over all tensors and profiles

Model: a transformer-like list of 300 tensors (50 blocks of a norm weight, qkv weight and bias,
projection and two MLP matrices): ~100M parameters on a GPU, ~10M on the CPU. Weights float32, or
bfloat16 with float32 shadows; one profile, or two (EDM2's sigma_rel 0.05 and 0.10 tracked
together). Bytes that must move per element: the weight read once, each float32 shadow read and
written once: sizeof(weight) + 8 * profiles.
"""
import pytest
import torch

from noisefast.ops.ema_update import ema_update_multi_
from noisefast.reference.ema_update import ema_update_foreach, ema_update_loop

from .common import bench_device, compiled, element_size, measure

BLOCKS = 50
DECAYS = (0.9999, 0.999)


def model_sizes(width: int):
    """Element counts of 6 * BLOCKS tensors: per block d, 3d*d, 3d, d*d, 4d*d, 4d*d (12 d^2 + 4 d)."""
    d = width
    return [n for _ in range(BLOCKS) for n in (d, 3 * d * d, 3 * d, d * d, 4 * d * d, 4 * d * d)]


# d = 128: 9.9M parameters (CPU); d = 416: 104M parameters (GPU).
WIDTH = 416 if bench_device().type == "cuda" else 128


def foreach_step(shadow_lists, weights):
    for shadows, decay in zip(shadow_lists, DECAYS):
        ema_update_foreach(shadows, weights, decay)


def loop_step(shadow_lists, weights):
    for shadows, decay in zip(shadow_lists, DECAYS):
        ema_update_loop(shadows, weights, decay)


def noisefast_step(shadow_lists, weights):
    ema_update_multi_(shadow_lists, weights, DECAYS[:len(shadow_lists)])


@pytest.mark.parametrize("profiles", [1, 2])
@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("provider", ["eager", "foreach", "compile", "noisefast"])
def test_ema_update(benchmark, provider, weight_dtype, profiles):
    device = bench_device()
    torch.manual_seed(0)
    sizes = model_sizes(WIDTH)
    weights = [torch.randn(n, device=device).to(weight_dtype) for n in sizes]
    shadow_lists = [[w.float() for w in weights] for _ in range(profiles)]
    fns = {
        "eager": lambda: loop_step(shadow_lists, weights),
        "foreach": lambda: foreach_step(shadow_lists, weights),
        "compile": lambda: compiled(foreach_step, ("ema", weight_dtype, profiles))(shadow_lists, weights),
        "noisefast": lambda: noisefast_step(shadow_lists, weights),
    }
    numel = sum(sizes)
    measure(benchmark, fns[provider], op="ema_update", provider=provider, numel=numel, dtype=weight_dtype,
            bytes_moved=numel * (element_size(weight_dtype) + 8 * profiles), tensors=len(sizes), profiles=profiles,
            headline=weight_dtype == torch.float32 and profiles == 1)
