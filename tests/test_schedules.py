"""Tests of noisefast.schedules: pinned values from docs/formulas.md, independent re-derivations (math,
numpy, scipy, mpmath; never the code under test), chi-square and KS tests of the samplers with
fixed seeds, the argument guards and reproducibility."""
from __future__ import annotations

import math
import zlib
from fractions import Fraction

import numpy as np
import pytest
import torch

# Optional on the GPU machine (gpu.md: no scipy there): the tests that need them skip, the rest
# of the module (its CUDA test included) still runs.
try:
    import mpmath
    from scipy import special, stats
except ImportError:
    mpmath = special = stats = None
needs_scipy = pytest.mark.skipif(stats is None, reason="needs scipy and mpmath")

from noisefast import schedules as S

P_VALUE_FLOOR = 1e-3  # fixed seeds make every statistical test deterministic


def karras_np(n, sigma_min=0.002, sigma_max=80.0, rho=7.0):
    i = np.arange(n, dtype=np.float64)
    return (sigma_min ** (1 / rho) + i / (n - 1) * (sigma_max ** (1 / rho) - sigma_min ** (1 / rho))) ** rho


def chi_square_p(indices: torch.Tensor, probs: np.ndarray) -> float:
    counts = np.bincount(indices.numpy(), minlength=len(probs))
    assert len(counts) == len(probs), "an index fell outside [0, N-2]"
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "an interval of probability 0 was drawn"
    return stats.chisquare(counts[keep], expected[keep]).pvalue


# --------------------------------------------------------------------------------------------------
# Karras levels

def test_karras_pinned_n11():
    expected = [0.002, 0.0167, 0.0851, 0.3183, 0.9654, 2.5152, 5.8389, 12.3816, 24.4083, 45.3137, 80.0]
    sigmas = S.karras_sigmas(11)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (11,)
    assert [round(v, 4) for v in sigmas.tolist()] == expected


@pytest.mark.parametrize("n,sigma_min,sigma_max,rho", [(2, 0.002, 80.0, 7.0), (1281, 0.002, 80.0, 7.0),
                                                       (37, 0.01, 10.0, 3.0), (5, 1e-4, 1e3, 1.0)])
def test_karras_matches_numpy(n, sigma_min, sigma_max, rho):
    sigmas = S.karras_sigmas(n, sigma_min, sigma_max, rho)
    np.testing.assert_allclose(sigmas.numpy(), karras_np(n, sigma_min, sigma_max, rho), rtol=1e-13)
    assert sigmas[0].item() == sigma_min and sigmas[-1].item() == sigma_max
    assert bool((sigmas[1:] > sigmas[:-1]).all())


def test_karras_dtype_and_device():
    sigmas = S.karras_sigmas(11, device="cpu", dtype=torch.float32)
    assert sigmas.dtype == torch.float32 and sigmas.device.type == "cpu"
    torch.testing.assert_close(sigmas, S.karras_sigmas(11).float())


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(n=1), ValueError, "n"), (dict(n=2.0), TypeError, "n"), (dict(n=True), TypeError, "n"),
    (dict(n=11, sigma_min=0.0), ValueError, "sigma_min"), (dict(n=11, sigma_min=-1.0), ValueError, "sigma_min"),
    (dict(n=11, sigma_min=80.0, sigma_max=80.0), ValueError, "sigma_min"),
    (dict(n=11, sigma_max=float("inf")), ValueError, "sigma_max"),
    (dict(n=11, rho=0.0), ValueError, "rho"), (dict(n=11, dtype=torch.int64), TypeError, "dtype"),
])
def test_karras_guards(kwargs, exc, word):
    with pytest.raises(exc, match=word):
        S.karras_sigmas(**kwargs)


def test_karras_levels_plain_and_cached():
    levels = S.KarrasLevels()
    torch.testing.assert_close(levels(21), S.karras_sigmas(21), rtol=0, atol=0)
    assert levels(21) is levels(21)
    assert levels(21, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(ValueError, match="predefined_max_levels"):
        levels.indices(11)


def test_karras_levels_predefined_ict_stages_equal_karras():
    """(M-1) divisible by (n-1): the subset is the n-level Karras vector itself."""
    levels = S.KarrasLevels(predefined_max_levels=1281)
    for n in (11, 21, 41, 81, 161, 321, 641, 1281):
        np.testing.assert_allclose(levels(n).numpy(), karras_np(n), rtol=1e-12)


@pytest.mark.parametrize("m,n", [(250, 30), (250, 249), (251, 20), (1281, 1000), (7, 7), (7, 2)])
def test_karras_levels_predefined_subset(m, n):
    levels = S.KarrasLevels(predefined_max_levels=m)
    # round(j (m-1) / (n-1)) with halves rounded up, in exact rational arithmetic
    expected_idx = [math.floor(Fraction(j * (m - 1), n - 1) + Fraction(1, 2)) for j in range(n)]
    assert levels.indices(n).tolist() == expected_idx
    assert expected_idx[0] == 0 and expected_idx[-1] == m - 1
    master = karras_np(m)
    np.testing.assert_allclose(levels(n).numpy(), master[expected_idx], rtol=1e-13)
    assert bool((levels(n)[1:] > levels(n)[:-1]).all())


def test_karras_levels_guards():
    with pytest.raises(ValueError, match="n must be <= predefined_max_levels"):
        S.KarrasLevels(predefined_max_levels=100)(101)
    with pytest.raises(ValueError, match="predefined_max_levels"):
        S.KarrasLevels(predefined_max_levels=1)
    with pytest.raises(ValueError, match="sigma_min"):
        S.KarrasLevels(sigma_min=10.0, sigma_max=1.0)


# --------------------------------------------------------------------------------------------------
# Curricula

def ict_reference(k, K, s0=10, s1=1280):
    k_prime = max(1, math.floor(K / (math.log2(math.floor(s1 / s0)) + 1)))
    return int(min(s0 * 2 ** math.floor(min(k, K) / k_prime), s1) + 1)


def test_ict_curriculum_pinned_k400000():
    K = 400000
    stages = [11, 21, 41, 81, 161, 321, 641, 1281]
    assert S.ICTCurriculum(K).stage_length == 50000
    for j, n in enumerate(stages):
        start = j * 50000
        assert S.ict_num_levels(start, K) == n
        assert S.ict_num_levels(start + 49999, K) == n
        if j:
            assert S.ict_num_levels(start - 1, K) == stages[j - 1]
    assert S.ict_num_levels(K, K) == 1281
    assert isinstance(S.ict_num_levels(0, K), int)


@pytest.mark.parametrize("K,s0,s1", [(400000, 10, 1280), (1000, 10, 1000), (777, 5, 200), (3, 10, 1280),
                                     (8, 10, 1280), (1, 2, 2)])
def test_ict_matches_reference(K, s0, s1):
    steps = sorted(set(list(range(0, K + 1, max(1, K // 997))) + [K, K + 5]))
    assert [S.ict_num_levels(k, K, s0, s1) for k in steps] == [ict_reference(k, K, s0, s1) for k in steps]


def test_ict_small_total_steps_guard():
    # K' = floor(5 / 8) = 0 is treated as 1: one doubling per step
    assert [S.ict_num_levels(k, 5) for k in range(6)] == [11, 21, 41, 81, 161, 321]


def test_ct_curriculum_matches_float_formula():
    for K, s0, s1 in [(1000, 2, 150), (400000, 2, 150), (12345, 3, 40), (1, 2, 150)]:
        steps = range(0, K + 1, max(1, K // 2000))
        ours = [S.ct_num_levels(k, K, s0, s1) for k in steps]
        ref = [math.ceil(math.sqrt(k / K * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2) - 1) + 1 for k in steps]
        assert ours == ref
    assert S.ct_num_levels(0, 400000) == 2 and S.ct_num_levels(400000, 400000) == 151
    assert S.ct_num_levels(200000, 400000) == 107
    assert S.ct_num_levels(10 ** 9, 400000) == 151  # clamped to total_steps


def test_sinusoidal_pinned_and_reference():
    K = 400000
    pinned = {0: 20, 100000: 88, 200000: 225, 255000: 250, 300000: 230, 400000: 30}
    assert {k: S.sinusoidal_num_levels(k, K) for k in pinned} == pinned
    k = np.arange(0, K + 1, 97)
    ref = np.ceil(np.abs(230 * np.sin(np.floor(10 * np.pi * (k / K) ** 1.5) / 10) + 20)).astype(int)
    assert [S.sinusoidal_num_levels(int(v), K) for v in k] == ref.tolist()
    assert S.sinusoidal_num_levels(K + 1000, K) == 30  # clamped


def test_ct_ema_decay():
    assert S.ct_ema_decay(2, 2, 0.95) == pytest.approx(0.95, abs=1e-15)
    assert S.ct_ema_decay(2) == pytest.approx(0.9, abs=1e-15)
    assert S.ct_ema_decay(151, 2, 0.9) == pytest.approx(math.exp(2 * math.log(0.9) / 151), rel=1e-15)
    assert S.ct_ema_decay(151) == pytest.approx(0.9986054697, abs=1e-10)
    # the paper's form, not openai's N-1 (which would give 0.9025 at step 0)
    assert S.ct_ema_decay(S.ct_num_levels(0, 1000), 2, 0.95) == pytest.approx(0.95)


@pytest.mark.parametrize("call,word", [
    (lambda: S.ct_ema_decay(0), "num_levels"), (lambda: S.ct_ema_decay(10, mu0=1.5), "mu0"),
    (lambda: S.ct_ema_decay(10, mu0=0.0), "mu0"), (lambda: S.ct_ema_decay(10, s0=0), "s0"),
    (lambda: S.ict_num_levels(-1, 100), "step"), (lambda: S.ict_num_levels(0, 0), "total_steps"),
    (lambda: S.ict_num_levels(0, 100, s0=0), "s0"), (lambda: S.ict_num_levels(0, 100, 10, 5), "s1"),
    (lambda: S.ct_num_levels(0, 100, s0=1), "s0"), (lambda: S.sinusoidal_num_levels(0, 100, s0=1), "s0"),
    (lambda: S.sinusoidal_num_levels(0, 100, 20, 10), "s1"), (lambda: S.ct_num_levels(1.5, 100), "step"),
    (lambda: S.ConstantCurriculum(1), "n"), (lambda: S.ICTCurriculum(0), "total_steps"),
])
def test_curriculum_guards(call, word):
    with pytest.raises((ValueError, TypeError), match=word):
        call()


def test_curriculum_objects():
    K = 400000
    for name, fn, cls in [("ict", S.ict_num_levels, S.ICTCurriculum), ("ct", S.ct_num_levels, S.CTCurriculum),
                          ("sinusoidal", S.sinusoidal_num_levels, S.SinusoidalCurriculum)]:
        cur = S.make_curriculum(name, K)
        assert isinstance(cur, cls) and cur.total_steps == K
        for k in (0, 1, 49999, 123456, 399999, K):
            assert cur.num_levels(k) == fn(k, K) == cur(k)
    assert S.make_curriculum("ict", K).max_levels == 1281
    assert S.make_curriculum("ct", K).max_levels == 151
    assert S.make_curriculum("sinusoidal", K).max_levels == 250
    assert S.make_curriculum("ct", 100, s0=3, s1=20).num_levels(0) == 3
    const = S.make_curriculum("constant", K, n=20)
    assert const.num_levels(0) == const.num_levels(10 ** 6) == const.max_levels == 20
    obj = S.SinusoidalCurriculum(1000)
    assert S.make_curriculum(obj, 5) is obj


@pytest.mark.parametrize("K", [1, 2, 5, 13, 47, 48, 49, 100])
def test_curriculum_max_levels_brute_force(K):
    for cur in (S.ICTCurriculum(K), S.CTCurriculum(K), S.SinusoidalCurriculum(K)):
        assert cur.max_levels == max(cur.num_levels(k) for k in range(K + 1))


def test_make_curriculum_guards():
    with pytest.raises(ValueError, match="one of"):
        S.make_curriculum("cosine", 100)
    with pytest.raises(ValueError, match="total_steps"):
        S.make_curriculum("ict")
    with pytest.raises(ValueError, match="n="):
        S.make_curriculum("constant", 100)
    with pytest.raises(ValueError, match="keyword"):
        S.make_curriculum(S.ICTCurriculum(100), 100, s0=3)
    with pytest.raises(TypeError, match="num_levels"):
        S.make_curriculum(42, 100)


# --------------------------------------------------------------------------------------------------
# The discrete log-normal distribution

def test_lognormal_probs_pinned_n11():
    p = S.lognormal_level_probs(S.karras_sigmas(11))
    expected = [0.0626, 0.1817, 0.2455, 0.2135, 0.1424, 0.0806, 0.0411, 0.0196, 0.0089, 0.0040]
    assert p.dtype == torch.float64 and p.shape == (10,)
    assert [round(v, 4) for v in p.tolist()] == expected
    assert p.sum().item() == pytest.approx(1.0, abs=1e-15)


@needs_scipy
@pytest.mark.parametrize("n,p_mean,p_std", [(11, -1.1, 2.0), (1281, -1.1, 2.0), (200, 0.5, 0.7)])
def test_lognormal_probs_match_scipy_erf(n, p_mean, p_std):
    s = karras_np(n)
    e = special.erf((np.log(s) - p_mean) / (math.sqrt(2) * p_std))
    ref = np.diff(e) / np.diff(e).sum()
    ours = S.lognormal_level_probs(torch.from_numpy(s), p_mean, p_std).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-16)


def _lognormal_probs_mp(values, p_mean=-1.1, p_std=2.0):
    """60-digit reference; upper-tail intervals through the survival function."""
    with mpmath.workdps(60):
        z = [(mpmath.log(mpmath.mpf(v)) - p_mean) / p_std for v in values]
        mass = [mpmath.ncdf(-a) - mpmath.ncdf(-b) if a > 0 else mpmath.ncdf(b) - mpmath.ncdf(a)
                for a, b in zip(z[:-1], z[1:])]
        total = sum(mass)
        return [float(m / total) for m in mass]


@needs_scipy
@pytest.mark.parametrize("values", [
    np.logspace(-300, 300, 1281).tolist(),
    [1e-200, 1e-100, 1e-50, 1e-10, 1e10, 1e100, 1e200, 1e300],
    [1e-300, 1e-300 * (1 + 1e-14), 2e-300],
    [1e300, 1e300 * (1 + 1e-15)],
    [50.0, 60.0, 1e3, 1e4],
])
def test_lognormal_probs_extreme_tails(values):
    p = S.lognormal_level_probs(torch.tensor(values, dtype=torch.float64))
    assert not bool(torch.isnan(p).any()) and bool((p >= 0).all())
    assert p.sum().item() == pytest.approx(1.0, abs=1e-14)
    # float64 log(sigma) is off by up to an ulp, which the tail density amplifies: rtol 1e-9
    np.testing.assert_allclose(p.numpy(), _lognormal_probs_mp(values), rtol=1e-9, atol=1e-300)


def test_lognormal_probs_karras_1281_extreme_params():
    for p_mean, p_std in [(-1.1, 2.0), (40.0, 0.05), (-40.0, 0.05), (0.0, 1e-3)]:
        p = S.lognormal_level_probs(S.karras_sigmas(1281), p_mean, p_std)
        assert not bool(torch.isnan(p).any()) and bool((p >= 0).all())
        assert p.sum().item() == pytest.approx(1.0, abs=1e-13)


def test_lognormal_probs_accepts_float32():
    s = S.karras_sigmas(41, dtype=torch.float32)
    p = S.lognormal_level_probs(s)
    assert p.dtype == torch.float64
    torch.testing.assert_close(p, S.lognormal_level_probs(s.double()))


@pytest.mark.parametrize("sigmas,exc,word", [
    (torch.tensor([1.0]), ValueError, "at least 2"), (torch.ones(2, 3), ValueError, "1-D"),
    (torch.tensor([2.0, 1.0]), ValueError, "ascending"), (torch.tensor([1.0, 1.0]), ValueError, "ascending"),
    (torch.tensor([0.0, 1.0]), ValueError, "> 0"), (torch.tensor([1.0, float("inf")]), ValueError, "finite"),
    (torch.tensor([1, 2]), TypeError, "floating"), ([0.1, 1.0], TypeError, "Tensor"),
])
def test_sigmas_guards(sigmas, exc, word):
    with pytest.raises(exc, match=word):
        S.lognormal_level_probs(sigmas)
    with pytest.raises(exc, match=word):
        S.UniformLevels().sample(4, sigmas)


def test_lognormal_probs_param_guards():
    with pytest.raises(ValueError, match="p_std"):
        S.lognormal_level_probs(S.karras_sigmas(11), p_std=0.0)
    with pytest.raises(ValueError, match="p_std"):
        S.LogNormalLevels(p_std=-1.0)


# --------------------------------------------------------------------------------------------------
# Level samplers

def _samplers_iid():
    return [S.LogNormalLevels(), S.LogNormalLevels(0.3, 0.8), S.UniformLevels(),
            S.PolynomialLevels(4.0, stratified=False), S.PolynomialLevels(2.5, stratified=False)]


def test_index_from_cdf_boundaries():
    cdf = torch.tensor([0.25, 0.25, 0.5, 1.0], dtype=torch.float64)  # interval 1 has probability 0
    u = torch.tensor([0.0, 0.2499, 0.25, 0.4999, 0.5, 0.9999999], dtype=torch.float64)
    assert S.index_from_cdf(cdf, u).tolist() == [0, 0, 2, 2, 3, 3]
    assert S.index_from_cdf(cdf, torch.tensor([1.0], dtype=torch.float64)).tolist() == [3]  # clamped


@needs_scipy
@pytest.mark.parametrize("sampler", _samplers_iid(), ids=repr)
@pytest.mark.parametrize("n", [11, 41])
def test_iid_sampler_chi_square(sampler, n):
    sigmas = S.karras_sigmas(n)
    idx = sampler.sample(200_000, sigmas, generator=torch.Generator().manual_seed(1234 + n))
    assert idx.dtype == torch.int64 and idx.shape == (200_000,)
    assert int(idx.min()) >= 0 and int(idx.max()) <= n - 2
    assert chi_square_p(idx, sampler.probs(sigmas).numpy()) > P_VALUE_FLOOR


@pytest.mark.parametrize("sampler", _samplers_iid() + [S.PolynomialLevels(4.0)], ids=repr)
def test_cdf_properties(sampler):
    sigmas = S.karras_sigmas(41)
    kwargs = {} if sampler.iid else {"batch_size": 64}
    cdf, probs = sampler.cdf(sigmas, **kwargs), sampler.probs(sigmas, **kwargs)
    assert cdf.dtype == probs.dtype == torch.float64 and cdf.shape == probs.shape == (40,)
    assert cdf[-1].item() == 1.0
    assert bool((torch.diff(cdf) >= 0).all()) and bool((probs >= 0).all())
    assert probs.sum().item() == pytest.approx(1.0, abs=1e-13)
    torch.testing.assert_close(torch.cumsum(probs, 0), cdf, rtol=0, atol=1e-13)
    assert sampler.fused == sampler.iid


def test_iid_flags():
    assert S.LogNormalLevels().iid and S.UniformLevels().iid
    assert S.PolynomialLevels(stratified=False).iid and S.PolynomialLevels(stratified=False).fused
    assert not S.PolynomialLevels().iid and not S.PolynomialLevels().fused


def test_polynomial_iid_probs_closed_form():
    n, curve = 41, 4.0
    i = np.arange(n - 1)
    ref = ((i + 1) / (n - 1)) ** (1 / curve) - (i / (n - 1)) ** (1 / curve)
    np.testing.assert_allclose(S.PolynomialLevels(curve, False).probs(S.karras_sigmas(n)).numpy(), ref,
                               rtol=1e-13)


def stratified_marginal_reference(n, batch, curve):
    """(1/B) sum_b P(idx_b = i), written out per stratum with scipy's normal CDF.

    The author's code keeps trunc(x) only for 0 <= x < N-2 (half-open, on the real value x), so
    x in [i, i+1) gives i for i = 0..N-3, and everything else falls back to floor(t_b)."""
    top = n - 2
    out = np.zeros(n - 1)
    for b in range(batch):
        t = (b / (batch - 1)) ** curve * top if batch > 1 else 0.0
        mu = t + n ** 0.2
        for i in range(top):
            out[i] += stats.norm.cdf(i + 1 - mu) - stats.norm.cdf(i - mu)
        out[math.floor(t)] += stats.norm.cdf(-mu) + stats.norm.sf(top - mu)
    return out / batch


@needs_scipy
@pytest.mark.parametrize("n,batch,curve", [(11, 7, 4.0), (41, 64, 4.0), (21, 1, 2.5), (2, 5, 3.5)])
def test_stratified_marginal_matches_reference(n, batch, curve):
    probs = S.PolynomialLevels(curve, stratified=True).probs(S.karras_sigmas(n), batch_size=batch)
    np.testing.assert_allclose(probs.numpy(), stratified_marginal_reference(n, batch, curve), rtol=1e-10,
                               atol=1e-15)


@needs_scipy
@pytest.mark.parametrize("n,batch", [(21, 32), (11, 5)])
def test_stratified_empirical_matches_marginal(n, batch):
    sampler = S.PolynomialLevels(4.0, stratified=True)
    sigmas = S.karras_sigmas(n)
    g = torch.Generator().manual_seed(99)
    batches = [sampler.sample(batch, sigmas, generator=g) for _ in range(4000)]
    for idx in batches[:20]:
        assert bool((idx[1:] >= idx[:-1]).all()), "stratified batches are sorted"
    # The draws of a batch are independent (not identical), so the pooled chi-square is conservative.
    assert chi_square_p(torch.cat(batches), sampler.probs(sigmas, batch_size=batch).numpy()) > P_VALUE_FLOOR


def test_stratified_edge_sizes():
    sampler = S.PolynomialLevels(4.0)
    assert sampler.sample(0, S.karras_sigmas(11)).shape == (0,)
    one = sampler.sample(1, S.karras_sigmas(11), generator=torch.Generator().manual_seed(0))
    assert one.shape == (1,) and 0 <= int(one) <= 9
    # a single interval: every draw, in range or fallen back, is index 0
    assert sampler.sample(50, S.karras_sigmas(2), generator=torch.Generator().manual_seed(0)).tolist() == [0] * 50


def test_stratified_needs_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        S.PolynomialLevels().probs(S.karras_sigmas(11))
    with pytest.raises(ValueError, match="batch_size"):
        S.PolynomialLevels().cdf(S.karras_sigmas(11))


@pytest.mark.parametrize("call,exc,word", [
    (lambda: S.PolynomialLevels(curve=0.0), ValueError, "curve"),
    (lambda: S.PolynomialLevels(curve=-2.0), ValueError, "curve"),
    (lambda: S.PolynomialLevels(curve=float("nan")), ValueError, "curve"),
    (lambda: S.PolynomialLevels(stratified=1), TypeError, "stratified"),
    (lambda: S.LogNormalLevels().sample(-1, S.karras_sigmas(11)), ValueError, "batch_size"),
    (lambda: S.UniformLevels().sample(2.0, S.karras_sigmas(11)), TypeError, "batch_size"),
    (lambda: S.LogNormalLevels().sample(4, S.karras_sigmas(11), generator=0), TypeError, "generator"),
])
def test_level_sampler_guards(call, exc, word):
    with pytest.raises(exc, match=word):
        call()


@pytest.mark.parametrize("sampler", _samplers_iid() + [S.PolynomialLevels(4.0)], ids=repr)
def test_level_sampler_reproducible(sampler):
    sigmas = S.karras_sigmas(81)
    torch.manual_seed(7)
    a = sampler.sample(500, sigmas)
    torch.manual_seed(7)
    b = sampler.sample(500, sigmas)
    assert torch.equal(a, b)
    c = sampler.sample(500, sigmas)
    assert not torch.equal(a, c)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    d = sampler.sample(500, sigmas, generator=torch.Generator().manual_seed(3))
    e = sampler.sample(500, sigmas, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d, e) and torch.equal(torch.get_rng_state(), state)


# --------------------------------------------------------------------------------------------------
# Continuous samplers: KS tests against scipy's distributions, truncation bounds

def _truncated(dist, lo, hi):
    f_lo, f_hi = dist.cdf(lo), dist.cdf(hi)
    return lambda x: np.clip((dist.cdf(x) - f_lo) / (f_hi - f_lo), 0.0, 1.0)


CONTINUOUS = [
    ("lognormal", lambda: S.LogNormal(), lambda: stats.lognorm(s=1.2, scale=math.exp(-1.2)).cdf, (0, math.inf)),
    ("lognormal_ect", lambda: S.LogNormal(-1.1, 2.0), lambda: stats.lognorm(s=2.0, scale=math.exp(-1.1)).cdf,
     (0, math.inf)),
    ("loguniform", lambda: S.LogUniform(0.002, 80.0), lambda: stats.loguniform(0.002, 80.0).cdf, (0.002, 80.0)),
    ("loglogistic", lambda: S.LogLogistic(-0.5, 1.2), lambda: stats.fisk(c=1 / 1.2, scale=math.exp(-0.5)).cdf,
     (0, math.inf)),
    ("loglogistic_trunc", lambda: S.LogLogistic(-0.5, 1.2, 0.01, 5.0),
     lambda: _truncated(stats.fisk(c=1 / 1.2, scale=math.exp(-0.5)), 0.01, 5.0), (0.01, 5.0)),
    ("vdiffusion", lambda: S.VDiffusion(0.5), lambda: stats.halfcauchy(scale=0.5).cdf, (0, math.inf)),
    ("vdiffusion_trunc", lambda: S.VDiffusion(0.5, 0.002, 80.0),
     lambda: _truncated(stats.halfcauchy(scale=0.5), 0.002, 80.0), (0.002, 80.0)),
    ("laplace", lambda: S.LaplaceLogSNR(), lambda: (lambda x: stats.laplace(0.0, 0.5).sf(-2 * np.log(x))),
     (0, math.inf)),
    ("laplace_shifted", lambda: S.LaplaceLogSNR(1.5, 2.0),
     lambda: (lambda x: stats.laplace(1.5, 2.0).sf(-2 * np.log(x))), (0, math.inf)),
]


@needs_scipy
@pytest.mark.parametrize("name,make,scipy_cdf,bounds", CONTINUOUS, ids=[c[0] for c in CONTINUOUS])
def test_continuous_ks_and_bounds(name, make, scipy_cdf, bounds):
    sampler, cdf = make(), scipy_cdf()
    x = sampler.sample(100_000, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())), dtype=torch.float64)
    assert x.dtype == torch.float64 and x.shape == (100_000,)
    xs = x.numpy()
    assert xs.min() >= bounds[0] and xs.max() <= bounds[1]
    assert stats.kstest(xs, cdf).pvalue > P_VALUE_FLOOR
    # the sampler's own CDF agrees with scipy's
    grid = np.quantile(xs, [0.001, 0.1, 0.5, 0.9, 0.999])
    np.testing.assert_allclose(sampler.cdf(torch.from_numpy(grid)).numpy(), cdf(grid), rtol=1e-9, atol=1e-12)


def test_continuous_cdf_edges():
    for sampler in (S.LogNormal(), S.LogUniform(0.1, 10.0), S.LogLogistic(0.0, 1.0, 0.5, 2.0),
                    S.VDiffusion(1.0, 0.5, 2.0), S.LaplaceLogSNR()):
        assert sampler.cdf(torch.tensor([-1.0, 0.0])).tolist() == [0.0, 0.0]
        assert sampler.cdf(torch.tensor(float("inf"))).item() == 1.0
        assert math.isnan(sampler.cdf(torch.tensor(float("nan"))).item())
    assert S.LogUniform(0.1, 10.0).cdf(1.0).item() == pytest.approx(0.5)


def test_continuous_dtype_device_and_reproducible():
    sampler = S.LogNormal()
    assert sampler.sample(8).dtype == torch.float32
    assert sampler.sample(8, dtype=torch.bfloat16).dtype == torch.bfloat16
    assert sampler.sample(0).shape == (0,)
    torch.manual_seed(11)
    a = sampler.sample(64)
    torch.manual_seed(11)
    assert torch.equal(a, sampler.sample(64))
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(S.LaplaceLogSNR().sample(64, generator=g1), S.LaplaceLogSNR().sample(64, generator=g2))


@pytest.mark.parametrize("call,word", [
    (lambda: S.LogNormal(p_std=0.0), "p_std"), (lambda: S.LogUniform(1.0, 1.0), "sigma_min"),
    (lambda: S.LogUniform(0.0, 1.0), "sigma_min"), (lambda: S.LogLogistic(0.0, 0.0), "scale"),
    (lambda: S.LogLogistic(0.0, 1.0, 2.0, 1.0), "min_value"), (lambda: S.LogLogistic(0.0, 1.0, -1.0), "min_value"),
    (lambda: S.VDiffusion(0.0), "sigma_data"), (lambda: S.VDiffusion(1.0, 3.0, 3.0), "min_value"),
    (lambda: S.LaplaceLogSNR(b=0.0), "b"), (lambda: S.LogNormal().sample(-2), "batch_size"),
    (lambda: S.LogNormal().sample(2, dtype=torch.int32), "dtype"),
    (lambda: S.LogLogistic(-1e4, 1e-3, 1.0, 2.0), "no probability mass"),
])
def test_continuous_guards(call, word):
    with pytest.raises((ValueError, TypeError), match=word):
        call()


# --------------------------------------------------------------------------------------------------
# ECT's r(t)

def test_ect_r_from_t():
    t = torch.tensor([1e-3, 0.1, 0.5, 1.0, 3.0, 80.0], dtype=torch.float64)
    for stage in (0, 1, 4):
        ref = [max(0.0, v * (1 - 2.0 ** -(stage + 1) * (1 + 8 / (1 + math.exp(v))))) for v in t.tolist()]
        np.testing.assert_allclose(S.ect_r_from_t(t, stage).numpy(), ref, rtol=1e-14)
    assert S.ect_r_from_t(t, 0)[0].item() == 0.0  # clamped: 1 - 0.5 * (1 + 8 sigmoid(-t)) < 0 for small t
    assert S.ect_r_from_t(t.float(), 2).dtype == torch.float32
    assert isinstance(S.ect_r_from_t(1.0, 3), float)
    assert S.ect_r_from_t(2.0, 1, q=4.0, k=0.0) == pytest.approx(2.0 * (1 - 4.0 ** -2))
    with pytest.raises(ValueError, match="q"):
        S.ect_r_from_t(t, 0, q=1.0)
    with pytest.raises(ValueError, match="stage"):
        S.ect_r_from_t(t, -1)


# --------------------------------------------------------------------------------------------------
# CUDA (runs when a GPU is present)

@pytest.mark.cuda
def test_cuda_samplers_and_probs():
    sigmas = S.karras_sigmas(41, device="cuda")
    for sampler in _samplers_iid() + [S.PolynomialLevels(4.0)]:
        idx = sampler.sample(1000, sigmas)
        assert idx.device.type == "cuda" and idx.dtype == torch.int64
        assert int(idx.min()) >= 0 and int(idx.max()) <= 39
        kwargs = {} if sampler.iid else {"batch_size": 128}
        torch.testing.assert_close(sampler.probs(sigmas, **kwargs).cpu(), sampler.probs(sigmas.cpu(), **kwargs),
                                   rtol=1e-12, atol=1e-15)
        assert sampler.cdf(sigmas, **kwargs)[-1].item() == 1.0
    idx = S.LogNormalLevels().sample(64, sigmas, generator=torch.Generator().manual_seed(0))
    assert idx.device.type == "cuda"  # a CPU generator draws on the CPU, the result is moved
    x = S.LogNormal().sample(16, device="cuda")
    assert x.device.type == "cuda" and x.dtype == torch.float32
    assert S.KarrasLevels(predefined_max_levels=250)(30, device="cuda").device.type == "cuda"
