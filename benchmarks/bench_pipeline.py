"""The whole noise pipeline of one consistency-training step, as iCT code runs it.

    sample levels -> consistency pair (x + sigma z, x + sigma' z, one z) -> pseudo-Huber loss
    forward + backward on given model outputs -> EMA of a large model's weights

The model itself is not part of it (its cost does not depend on noisefast): the "model output" at
the student level is x_next itself, a leaf that receives the loss gradient.

eager:     the public iCT style: torch.multinomial for the levels, randn_like, two
           x + sigma.view(-1, 1, 1, 1) * z, the per-sample pseudo-Huber in eager ops, then
           torch._foreach_lerp_ for the EMA (the fastest eager EMA).
compile:   torch.compile of the same step (the EMA included).
noisefast: ConsistencyNoise.sample (levels and pair fused), pseudo_huber_loss, ema_update_.

Bytes that must move, per step: the pair reads x and writes two tensors (3 N), the loss reads two
tensors forward (2 N) and again backward, writing one gradient (3 N): 8 N elements; the EMA reads
the shadow and the weights and writes the shadow (3 P float32 values).
"""
import math

import pytest
import torch

import noisefast

from .common import bench_device, compiled, element_size, measure

DEVICE = bench_device()
if DEVICE.type == "cuda":
    BATCH, IMAGE, PARAMS, TENSORS = 256, (3, 64, 64), 100_000_000, 300
else:
    BATCH, IMAGE, PARAMS, TENSORS = 64, (3, 32, 32), 8_000_000, 300
NUM_LEVELS = 1281
DECAY = 0.9999


def make_weights(total: int, count: int, dtype: torch.dtype):
    """`count` tensors holding `total` elements, in sizes like a network's (a few big, many small)."""
    raw = torch.logspace(0, 3, count)
    sizes = (raw / raw.sum() * total).long().clamp_min(1)
    return [torch.randn(int(s), device=DEVICE, dtype=dtype) for s in sizes]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = torch.randn(BATCH, *IMAGE, device=DEVICE)
    sigmas = noisefast.karras_sigmas(NUM_LEVELS, device=DEVICE, dtype=torch.float32)
    probs = noisefast.lognormal_level_probs(sigmas.double()).float()
    weights = make_weights(PARAMS, TENSORS, torch.float32)
    shadows = [w.clone() for w in weights]
    c = 0.00054 * math.sqrt(x[0].numel())
    return x, sigmas, probs, weights, shadows, c


def eager_step(x, sigmas, probs, weights, shadows, c: float):
    index = torch.multinomial(probs, x.shape[0], replacement=True)
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    z = torch.randn_like(x)
    x_cur = x + sigma.view(-1, 1, 1, 1) * z
    x_next = (x + sigma_next.view(-1, 1, 1, 1) * z).detach().requires_grad_()
    weight = 1.0 / (sigma_next - sigma)
    diff = (x_next - x_cur).flatten(1)
    loss = (weight * (torch.sqrt(diff.pow(2).sum(1) + c * c) - c)).mean()
    loss.backward()
    torch._foreach_lerp_(shadows, weights, 1.0 - DECAY)
    return loss.detach()


def noisefast_step(noise, x, step, weights, shadows, c: float):
    batch = noise.sample(x, step)
    x_next = batch.x_next.detach().requires_grad_()
    loss = noisefast.pseudo_huber_loss(x_next, batch.x_cur, c=c, weight=batch.weight)
    loss.backward()
    noisefast.ema_update_(shadows, weights, DECAY)
    return loss.detach()


@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_consistency_step(benchmark, provider, setup):
    x, sigmas, probs, weights, shadows, c = setup
    if provider == "noisefast":
        noise = noisefast.ConsistencyNoise(levels=noisefast.LogNormalLevels(),
                                           curriculum=noisefast.ConstantCurriculum(NUM_LEVELS), total_steps=1000)
        fn = lambda: noisefast_step(noise, x, 10, weights, shadows, c)  # noqa: E731
    elif provider == "eager":
        fn = lambda: eager_step(x, sigmas, probs, weights, shadows, c)  # noqa: E731
    else:
        step = compiled(eager_step, ("pipeline",))
        fn = lambda: step(x, sigmas, probs, weights, shadows, c)  # noqa: E731
    n = x.numel()
    measure(benchmark, fn, op="ict_noise_pipeline", provider=provider, numel=n, dtype=torch.float32,
            bytes_moved=8 * n * element_size(torch.float32) + 3 * PARAMS * 4,
            rounds=5 if DEVICE.type == "cpu" else 20, params=PARAMS, headline=True)
