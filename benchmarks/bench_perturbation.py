"""Benchmarks of the perturbation ops: eager PyTorch as public training code writes it, torch.compile
of that same code, and noisefast.

Run: ``pytest benchmarks/bench_perturbation.py --benchmark-json=out.json`` (pytest-benchmark).

- consistency_pair: iCT's noisy pair, eager = ``randn_like`` + two ``x + sigma.view(-1,1,1,1) * noise``.
- add_noise: diffusion noising with offset noise 0.1 and DDPM-IP perturbation 0.1, eager = the
  diffusers text-to-image example's lines.
- consistency_step: a whole iCT step's noise at N = 1281 levels, eager = ``torch.multinomial`` over the
  log-normal interval probabilities, gathers, then the pair; noisefast = ``ConsistencyNoise.sample``
  (levels drawn inside the fused kernel).

Bytes the op must move: read x once, write the two outputs (3 x numel x element size); the per-sample
values and level tables are negligible. x is [B, 4, H, 32] with B = 32 (numel < 1e6) or 128, so a
sample holds numel / B elements; sigma is one float32 value per sample, cast to x's dtype for eager
(so that eager returns x's dtype, as noisefast does).
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import PROVIDERS, bench_device, compiled, element_size, measure, sizes
from noisefast.consistency import ConsistencyNoise
from noisefast.ops.perturbation import add_noise, consistency_pair
from noisefast.reference.perturbation import add_noise_eager, consistency_pair_eager, sampled_consistency_pair_eager

SIZES = sizes(cpu=[10 ** 5, 10 ** 6, 4 * 2 ** 20], cuda=[10 ** 5, 10 ** 6, 4 * 10 ** 6, 16 * 10 ** 6, 64 * 10 ** 6])
DTYPES = [torch.float32, torch.bfloat16]
STEP = 350_000  # iCT with K = 400000: N = 1281 levels
TOTAL_STEPS = 400_000


def _inputs(numel: int, dtype: torch.dtype):
    device = bench_device()
    batch = 32 if numel < 10 ** 6 else 128
    height = max(numel // (batch * 4 * 32), 1)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 4, height, 32, device=device, generator=g).to(dtype)
    sigma = torch.rand(batch, device=device, generator=g) * 10
    sigma_next = sigma + torch.rand(batch, device=device, generator=g)
    return x, sigma, sigma_next


def _bytes(x: torch.Tensor) -> int:
    return 3 * x.numel() * element_size(x.dtype)


def _provider_fn(provider: str, eager, fast, key: tuple):
    if provider == "eager":
        return eager
    if provider == "compile":
        return compiled(eager, key)
    return fast


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_consistency_pair(benchmark, provider, numel, dtype):
    x, sigma, sigma_next = _inputs(numel, dtype)
    s0, s1 = sigma.to(dtype), sigma_next.to(dtype)
    fn = _provider_fn(provider, consistency_pair_eager, consistency_pair, ("consistency_pair", dtype))
    args = (s0, s1) if provider != "noisefast" else (sigma, sigma_next)
    measure(benchmark, lambda: fn(x, *args), op="consistency_pair", provider=provider, numel=x.numel(),
            dtype=dtype, bytes_moved=_bytes(x))


def _add_noise_eager(x, sigma):
    return add_noise_eager(x, sigma, input_perturbation=0.1, offset_noise=0.1)


def _add_noise_fast(x, sigma):
    return add_noise(x, sigma, input_perturbation=0.1, offset_noise=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_add_noise(benchmark, provider, numel, dtype):
    x, sigma, _ = _inputs(numel, dtype)
    fn = _provider_fn(provider, _add_noise_eager, _add_noise_fast, ("add_noise", dtype))
    s = sigma.to(dtype) if provider != "noisefast" else sigma
    measure(benchmark, lambda: fn(x, s), op="add_noise", provider=provider, numel=x.numel(), dtype=dtype,
            bytes_moved=_bytes(x), input_perturbation=0.1, offset_noise=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("numel", SIZES)
@pytest.mark.parametrize("provider", PROVIDERS)
def test_consistency_step(benchmark, provider, numel, dtype):
    x, _, _ = _inputs(numel, dtype)
    noise = ConsistencyNoise(total_steps=TOTAL_STEPS)
    sigmas, _ = noise.table(STEP, x.device)
    probs = noise.levels.probs(sigmas)
    levels = sigmas.to(dtype)  # eager gathers levels in x's dtype so its outputs match x's dtype

    def eager(x):
        return sampled_consistency_pair_eager(x, levels, probs)

    if provider == "noisefast":
        fn = lambda: noise.sample(x, STEP)  # noqa: E731
    else:
        step_fn = _provider_fn(provider, eager, None, ("consistency_step", dtype))
        fn = lambda: step_fn(x)  # noqa: E731
    measure(benchmark, fn, op="consistency_step", provider=provider, numel=x.numel(), dtype=dtype,
            bytes_moved=_bytes(x), num_levels=int(sigmas.numel()),
            headline=dtype == torch.float32 and numel == SIZES[-2])
