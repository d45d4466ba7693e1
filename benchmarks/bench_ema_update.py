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


# --------------------------------------------------------------------------------------------
# A whole EMA step of a real model: the classes users have (diffusers' EMAModel, timm's ModelEmaV3,
# torch's AveragedModel with get_ema_multi_avg_fn) against their noisefast.compat drop-ins.
#
# Model: ResNet-50 (25.6M parameters in 161 tensors, 53 BatchNorms), timm's or torchvision's (the
# same shapes). Rows (op "ema_model"), providers "peer" (the original) and "noisefast" (the drop-in):
#   api=diffusers          EMAModel(params).step(params), diffusers' per-parameter loop (its default)
#   api=diffusers-foreach  the same with foreach=True (torch._foreach_sub_ / _foreach_sub)
#   api=timm               ModelEmaV3(model, decay).update(model): parameters and BatchNorm buffers
#   api=averagedmodel      AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)).update_parameters(model)
#   api=list               eager (noisefast.reference's per-tensor loop), compile (torch.compile of the
#                          foreach form), noisefast (noisefast.EMA(model, include_buffers=False).update())
# Bytes per parameter: the weight read once and the float32 shadow read and written: 12.

def resnet50():
    torch.manual_seed(0)
    try:
        import timm
        return timm.create_model("resnet50")
    except ImportError:
        pass
    try:
        import torchvision
        return torchvision.models.resnet50()
    except ImportError:
        pytest.skip("needs timm or torchvision for the ResNet-50 (pip install -e .[test])")


def model_step(api: str, provider: str, model):
    """The function timed for (api, provider); pytest.skip when the peer is not installed."""
    params = list(model.parameters())
    decay = 0.9999
    if api in ("diffusers", "diffusers-foreach"):
        foreach = api == "diffusers-foreach"
        if provider == "peer":
            training_utils = pytest.importorskip("diffusers.training_utils", reason="diffusers is not installed")
            ema = training_utils.EMAModel(params, decay=decay, foreach=foreach)
        else:
            from noisefast.compat.diffusers import EMAModel
            ema = EMAModel(params, decay=decay, foreach=foreach)
        return lambda: ema.step(model.parameters())
    if api == "timm":
        if provider == "peer":
            timm_utils = pytest.importorskip("timm.utils", reason="timm is not installed")
            ema = timm_utils.ModelEmaV3(model, decay=decay)
        else:
            from noisefast.compat.timm import ModelEmaV3
            ema = ModelEmaV3(model, decay=decay)
        return lambda: ema.update(model)
    if api == "averagedmodel":
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        if provider == "noisefast":
            from noisefast import get_ema_multi_avg_fn
        averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
        averaged.update_parameters(model)  # the first call copies
        return lambda: averaged.update_parameters(model)
    shadows = [[p.detach().clone() for p in params]]
    if provider == "eager":
        return lambda: ema_update_loop(shadows[0], params, decay)
    if provider == "compile":
        return lambda: compiled(foreach_step, ("ema-model",))(shadows, params)
    from noisefast import EMA
    ema = EMA(model, decay=decay, include_buffers=False)
    return ema.update


MODEL_CASES = [("diffusers", "peer"), ("diffusers", "noisefast"), ("diffusers-foreach", "peer"),
               ("diffusers-foreach", "noisefast"), ("timm", "peer"), ("timm", "noisefast"),
               ("averagedmodel", "peer"), ("averagedmodel", "noisefast"),
               ("list", "eager"), ("list", "compile"), ("list", "noisefast")]


@pytest.mark.parametrize("api,provider", MODEL_CASES, ids=[f"{a}-{p}" for a, p in MODEL_CASES])
def test_ema_model_step(benchmark, api, provider):
    device = bench_device()
    model = resnet50().to(device)
    fn = model_step(api, provider, model)
    numel = sum(p.numel() for p in model.parameters())
    measure(benchmark, fn, op="ema_model", provider=provider, numel=numel, dtype=torch.float32,
            bytes_moved=numel * 12, model="resnet50", api=api, tensors=len(list(model.parameters())))
