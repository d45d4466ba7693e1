"""A compiled consistency-training step over a curriculum: per-step time and graphs compiled.

Each timed call runs the whole iCT curriculum of K = 40 steps (N doubles every 5 steps, 11 -> 1281
levels: 8 values); the time reported is per step. Both providers compile their forward region with
``torch.compile(fullgraph=True)`` (inductor), run backward through the compiled graph, and update
an EMA of the model's weights with the ramp warm-up in a second fullgraph region:

compile:   the step users write today, compiled: the level table of the current N built on the
           host (Karras levels and iCT's log-normal probabilities, cached per N) and passed in,
           torch.multinomial, randn_like, the two noisy inputs, the pseudo-Huber loss; the EMA as
           torch._foreach_lerp_ with the decay computed from a step tensor. A new N is a new
           table shape: Dynamo recompiles once to make it dynamic.
noisefast: ConsistencyNoise.sample(x, step) (every table of the run built once, N as data),
           pseudo_huber_loss, and EMA.update() (counter and decay on the device).

The "model" is one learnable scale per channel (its cost is negligible: the step is the noise
pipeline). Recorded with each row: the graphs compiled during the first pass over the curriculum
and in every pass after it (``recompiles``: 0 means that no change of N, step or decay recompiles),
and the first pass's time as the compile time.
"""
from __future__ import annotations

import math
import time

import pytest
import torch

import noisefast
from noisefast import schedules as S

from .common import bench_device, element_size, measure

DEVICE = bench_device()
K = 40
BATCH, IMAGE = (256, (3, 64, 64)) if DEVICE.type == "cuda" else (64, (3, 32, 32))
C = 0.00054 * math.sqrt(math.prod(IMAGE))


class GraphCounter:
    """An inductor backend that counts the graphs it compiles."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        from torch._inductor.compile_fx import compile_fx

        self.graphs += 1
        return compile_fx(gm, example_inputs)


def _eager_tables(n: int):
    sigmas = S.karras_sigmas(n, device=DEVICE, dtype=torch.float64)
    return sigmas.float(), S.lognormal_level_probs(sigmas).float()


def _eager_forward(x, w, sigmas, probs):
    index = torch.multinomial(probs, x.shape[0], replacement=True)
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    z = torch.randn_like(x)
    x_cur = x + sigma.view(-1, 1, 1, 1) * z
    x_next = x + sigma_next.view(-1, 1, 1, 1) * z
    weight = 1.0 / (sigma_next - sigma)
    diff = (x_next * w - (x_cur * w).detach()).flatten(1)
    return (weight * (torch.sqrt(diff.pow(2).sum(1) + C * C) - C)).mean()


def _eager_ema(shadows, weights, step):
    u = (step - 1).clamp(min=0).double()
    decay = torch.where(u > 0, ((1 + u) / (10 + u)).clamp(max=0.9999), 0.0)
    torch._foreach_lerp_(shadows, weights, (1 - decay).float())
    step += 1


def _eager_provider(counter):
    forward = torch.compile(_eager_forward, backend=counter, fullgraph=True)
    ema = torch.compile(_eager_ema, backend=counter, fullgraph=True)
    w = torch.ones(IMAGE[0], 1, 1, device=DEVICE, requires_grad=True)
    shadows, step = [w.detach().clone()], torch.ones((), dtype=torch.int64, device=DEVICE)
    curriculum, tables = S.ICTCurriculum(K), {}

    def run_step(x, k):
        n = curriculum.num_levels(k)
        if n not in tables:
            tables[n] = _eager_tables(n)
        loss = forward(x, w, *tables[n])
        loss.backward()
        with torch.no_grad():
            ema(shadows, [w.detach()], step)
        return loss
    return run_step


def _noisefast_provider(counter):
    noise = noisefast.ConsistencyNoise(total_steps=K, device=DEVICE)
    w = torch.ones(IMAGE[0], 1, 1, device=DEVICE, requires_grad=True)
    ema = noisefast.EMA([w], decay=0.9999, warmup="ramp")

    def loss_of(x, k):
        batch = noise.sample(x, k)
        return noisefast.pseudo_huber_loss(batch.x_next * w, (batch.x_cur * w).detach(), c=C, weight=batch.weight)

    forward = torch.compile(loss_of, backend=counter, fullgraph=True)
    update = torch.compile(ema.update, backend=counter, fullgraph=True)

    def run_step(x, k):
        loss = forward(x, k)
        loss.backward()
        update()
        return loss
    return run_step


@pytest.mark.parametrize("provider", ["compile", "noisefast"])
def test_compiled_step_over_a_curriculum(benchmark, provider):
    torch.manual_seed(0)
    x = torch.randn(BATCH, *IMAGE, device=DEVICE)
    counter = GraphCounter()
    run_step = (_noisefast_provider if provider == "noisefast" else _eager_provider)(counter)

    def curriculum():
        for k in range(K):
            run_step(x, k)

    start = time.perf_counter()
    curriculum()  # compiles
    first_pass_s, first_pass = time.perf_counter() - start, counter.graphs
    n = x.numel()
    # Bytes per step, as the pipeline benchmark counts them (the pair 3 N, the loss 5 N).
    measure(benchmark, curriculum, op="compiled_ict_step", provider=provider, numel=n, dtype=torch.float32,
            bytes_moved=8 * n * element_size(torch.float32), rounds=3 if DEVICE.type == "cpu" else 10,
            headline=True, steps=K)
    benchmark.extra_info.update(graphs_first_pass=first_pass, recompiles=counter.graphs - first_pass,
                                compile_s=round(first_pass_s, 3))
