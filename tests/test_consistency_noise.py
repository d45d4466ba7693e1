"""Tests of ConsistencyNoise (noisefast/consistency.py): the fused i.i.d. path against the reference,
level statistics against each sampler's probabilities, the two-step stratified path, curricula."""
from __future__ import annotations

import pytest
import torch

from noisefast.consistency import ConsistencyBatch, ConsistencyNoise
from noisefast.ops.perturbation import consistency_pair
from noisefast.random import draw_seed
from noisefast.reference import perturbation as R
from noisefast.schedules import LogNormalLevels, PolynomialLevels, UniformLevels, karras_sigmas

from helpers import assert_close, backend_params, run_on

BACKENDS = backend_params()
TOTAL = 400_000  # iCT's K: N = 11 at step 0, 1281 from step 350000


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_fused_sample_matches_reference(backend, dtype):
    noise = ConsistencyNoise(total_steps=TOTAL)
    assert noise.fused
    x = torch.randn(6, 3, 5, 7, generator=gen(0)).to(dtype)
    for step in (0, 360_000):
        batch = run_on(backend, noise.sample, x, step, generator=gen(step + 1))
        assert isinstance(batch, ConsistencyBatch)
        sigmas, cdf = noise.table(step, "cpu")
        assert sigmas.numel() == noise.num_levels(step) == (11 if step == 0 else 1281)
        ref = R.sampled_consistency_pair(x, draw_seed("cpu", gen(step + 1)), sigmas, cdf, 0)
        assert torch.equal(batch.index, ref[5])
        for k, name in ((2, "sigma"), (3, "sigma_next"), (4, "weight")):
            assert torch.equal(getattr(batch, name), ref[k]), name
        rtol, atol = (1e-6, 1e-6) if dtype != torch.bfloat16 else (2 ** -7, 1e-2)
        assert_close(batch.x_cur, ref[0], rtol=rtol, atol=atol, what=f"{backend} x_cur")
        assert_close(batch.x_next, ref[1], rtol=rtol, atol=atol, what=f"{backend} x_next")
        assert batch.x_cur.dtype == dtype and batch.sigma.dtype == torch.float32
        assert batch.index.dtype == torch.int64 and batch.index.shape == (6,)


def test_batch_fields_are_consistent():
    noise = ConsistencyNoise(total_steps=TOTAL)
    x = torch.randn(64, 2, 3, 3, dtype=torch.float64, generator=gen(1))
    b = noise.sample(x, 120_000, generator=gen(2))
    sigmas, _ = noise.table(120_000, "cpu")
    assert torch.equal(b.sigma, sigmas[b.index].float())
    assert torch.equal(b.sigma_next, sigmas[b.index + 1].float())
    assert torch.equal(b.weight, (1 / (sigmas[b.index + 1] - sigmas[b.index])).float())
    view = (-1, 1, 1, 1)
    z_cur = (b.x_cur - x) / b.sigma.double().view(view)
    z_next = (b.x_next - x) / b.sigma_next.double().view(view)
    assert_close(z_next, z_cur, rtol=1e-9, atol=1e-9, what="one z in both inputs")


def _chi_square(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """p-value of observed counts against probs; bins with expected count < 5 are merged.
    (scipy is imported here: the GPU machine has none, and this module holds a CUDA test.)"""
    stats = pytest.importorskip("scipy.stats")
    expected = probs.double() * counts.sum()
    keep = expected >= 5
    obs = torch.cat([counts[keep].double(), counts[~keep].double().sum().reshape(1)])
    exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    if exp[-1] < 5:  # fold the remainder into the smallest kept bin
        j = int(exp[:-1].argmin())
        obs[j] += obs[-1]
        exp[j] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    return stats.chisquare(obs.numpy(), exp.numpy()).pvalue


@pytest.mark.parametrize("levels", [LogNormalLevels(), UniformLevels(), PolynomialLevels(curve=4.0, stratified=False),
                                    LogNormalLevels(p_mean=0.5, p_std=1.0)], ids=repr)
def test_level_statistics_fused(levels):
    """Indices drawn in the kernel (inverse CDF of the portable uniform stream) follow probs."""
    noise = ConsistencyNoise(levels, curriculum="ict", total_steps=TOTAL)
    assert noise.fused
    step = 100_000  # N = 41
    batch = noise.sample(torch.zeros(200_000, 1), step, generator=gen(3))
    sigmas, _ = noise.table(step, "cpu")
    probs = levels.probs(sigmas)
    counts = torch.bincount(batch.index, minlength=probs.numel())
    assert counts.numel() == probs.numel()
    assert _chi_square(counts, probs) > 1e-4
    # An interval of probability 0 under a (nearly) degenerate distribution is never drawn.
    assert int(counts[probs == 0].sum()) == 0


def test_level_statistics_detect_a_wrong_distribution():
    """The chi-square check has power: log-normal draws do not pass as uniform."""
    noise = ConsistencyNoise(total_steps=TOTAL)
    batch = noise.sample(torch.zeros(20_000, 1), 100_000, generator=gen(4))
    sigmas, _ = noise.table(100_000, "cpu")
    counts = torch.bincount(batch.index, minlength=sigmas.numel() - 1)
    assert _chi_square(counts, UniformLevels().probs(sigmas)) < 1e-6


def test_stratified_polynomial_two_steps():
    levels = PolynomialLevels(curve=4.0, stratified=True)
    noise = ConsistencyNoise(levels, curriculum="sinusoidal", total_steps=1000)
    assert not noise.fused
    x = torch.randn(32, 3, 4, 4, generator=gen(5))
    step = 300
    b = noise.sample(x, step, generator=gen(6))
    sigmas, cdf = noise.table(step, "cpu")
    assert cdf is None
    assert bool((b.index[1:] >= b.index[:-1]).all()), "the stratified sampler sorts its batch"
    # The same generator, used in the same order by hand: indices first, then the pair.
    g = gen(6)
    index = levels.sample(32, sigmas, generator=g)
    x_cur, x_next = consistency_pair(x, sigmas[index].float(), sigmas[index + 1].float(), generator=g)
    assert torch.equal(b.index, index)
    assert torch.equal(b.x_cur, x_cur) and torch.equal(b.x_next, x_next)
    assert torch.equal(b.weight, (1 / (sigmas[index + 1] - sigmas[index])).float())
    # Its marginal over many batches follows probs(sigmas, batch_size).
    counts = torch.zeros(sigmas.numel() - 1, dtype=torch.int64)
    g = gen(7)
    for _ in range(200):
        counts += torch.bincount(noise.sample(torch.zeros(64, 1), step, generator=g).index, minlength=counts.numel())
    assert _chi_square(counts, levels.probs(sigmas, batch_size=64)) > 1e-4


def test_curricula_and_predefined_levels():
    noise = ConsistencyNoise(curriculum="ct", total_steps=1000)
    assert [noise.num_levels(k) for k in (0, 1000)] == [2, 151]
    b = noise.sample(torch.zeros(100, 1), 0, generator=gen(8))
    assert bool((b.index == 0).all())  # two levels: one interval
    assert torch.equal(b.sigma, torch.full((100,), 0.002))
    pre = ConsistencyNoise(curriculum="sinusoidal", total_steps=1000, predefined_levels=True)
    master = karras_sigmas(pre.curriculum.max_levels)
    sigmas, _ = pre.table(500, "cpu")
    assert bool(torch.isin(sigmas, master).all()), "predefined: every level from one Karras vector"
    assert pre.table(500, "cpu")[0] is sigmas, "tables are cached"


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_to_x(backend):
    noise = ConsistencyNoise(total_steps=TOTAL)
    x = torch.randn(4, 5, requires_grad=True)
    b = run_on(backend, noise.sample, x, 0)
    (b.x_cur.sum() + 3 * b.x_next.sum()).backward()
    assert torch.equal(x.grad, torch.full_like(x, 4.0))


def test_errors():
    noise = ConsistencyNoise(total_steps=TOTAL)
    with pytest.raises(TypeError, match="x must be float32"):
        noise.sample(torch.zeros(4, 2, dtype=torch.int32), 0)
    with pytest.raises(ValueError, match="batch dimension"):
        noise.sample(torch.tensor(1.0), 0)
    with pytest.raises(TypeError, match="levels must have a sample"):
        ConsistencyNoise(levels="lognormal", total_steps=TOTAL)
    with pytest.raises(ValueError, match="needs total_steps"):
        ConsistencyNoise()
    with pytest.raises(ValueError, match="step"):
        noise.sample(torch.zeros(4, 2), -1)


@pytest.mark.cuda
def test_one_launch_on_cuda():
    """The fused path launches one kernel for levels and noise (plus the seed draw)."""
    noise = ConsistencyNoise(total_steps=TOTAL)
    x = torch.randn(8, 3, 32, 32, device="cuda")
    noise.sample(x, 0)  # builds the cached table and compiles the kernel
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        b = noise.sample(x, 0)
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert sum("_sampled_pair_kernel" in k for k in kernels) == 1, kernels
    assert len(kernels) <= 2, kernels
    assert b.x_cur.shape == x.shape and b.index.device.type == "cuda"
