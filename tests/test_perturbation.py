"""Tests of consistency_pair, add_noise and the fused level-sampling op sampled_consistency_pair
(noisefast/ops/perturbation.py) on every backend that runs here (Triton through the interpreter)."""
from __future__ import annotations

import math

import pytest
import torch

import noisefast
from noisefast._dtypes import math_dtype
from noisefast.ops.perturbation import add_noise, add_noise_op, consistency_pair, consistency_pair_op
from noisefast.ops.perturbation import sampled_consistency_pair, sampled_consistency_pair_op
from noisefast.random import STREAM_NOISE, STREAM_OFFSET, STREAM_PERTURBATION, draw_seed
from noisefast.reference import perturbation as R
from noisefast.reference.philox import normal_stream

from helpers import assert_close, assert_low_precision_rule, backend_params, run_on

BACKENDS = backend_params()
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SEED = 0x5DEECE66D2F
# Shapes: odd sizes (not multiples of a program), and one whose samples span more than a Triton
# program (1200 elements > 1024: the "wide" paths that resolve per-sample values once).
SHAPES = [(3, 5, 7, 11), (2, 3, 20, 20)]
# Offsets of x's first element in the noise streams: not a multiple of 4, and past 2^32 so the
# high counter word and 64-bit position arithmetic are exercised (int64 indexing on small tensors).
OFFSETS = [0, 3, 2 ** 33 + 1]


def seed_tensor(value: int = SEED) -> torch.Tensor:
    return torch.tensor([value], dtype=torch.int64)


def tol(dtype: torch.dtype):
    """Kernel vs reference at the same dtype: fp32 within 1e-6 (the stream agrees to a few ulps of
    log/sin/cos); lower precisions within one rounding of the storage dtype."""
    return {torch.float32: (1e-6, 1e-6), torch.float64: (1e-6, 1e-6),
            torch.float16: (2 ** -10, 1e-3), torch.bfloat16: (2 ** -7, 1e-2)}[dtype]




def data(shape, dtype, *, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype)


def per_sample(batch, dtype=torch.float32, *, low=0.0, high=2.0, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(batch, generator=g)).to(dtype)


# ---- kernels vs reference, given a seed ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_consistency_pair_matches_reference(backend, dtype, shape):
    x = data(shape, dtype)
    batch, numel = shape[0], x.numel()
    acc = math_dtype(dtype)
    sigma, sigma_next = per_sample(batch, acc), per_sample(batch, acc, low=2.0, high=80.0, seed=2)
    for offset in OFFSETS:
        out = run_on(backend, consistency_pair_op, x, seed_tensor(), sigma, sigma_next, numel // batch, offset)
        ref = R.consistency_pair(x, seed_tensor(), sigma, sigma_next, numel // batch, offset)
        rtol, atol = tol(dtype)
        for name, a, e in zip(("x_cur", "x_next"), out, ref):
            assert a.dtype == dtype and a.shape == x.shape
            assert_close(a, e, rtol=rtol, atol=atol, what=f"{backend} {name} offset={offset}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES + [(2, 2, 33, 33)])  # the last: offset rows wider than a program
@pytest.mark.parametrize("gamma,offset_noise", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.3), (0.15, 0.2)])
def test_add_noise_matches_reference(backend, dtype, shape, gamma, offset_noise):
    x = data(shape, dtype)
    batch, channels, numel = shape[0], shape[1], x.numel()
    acc = math_dtype(dtype)
    alpha, sigma = per_sample(batch, acc, low=0.1, high=1.0, seed=3), per_sample(batch, acc, seed=4)
    args = (alpha, sigma, gamma, offset_noise, numel // batch, numel // (batch * channels), 5)
    out = run_on(backend, add_noise_op, x, seed_tensor(), *args)
    ref = R.add_noise(x, seed_tensor(), *args)
    rtol, atol = tol(dtype)
    for name, a, e in zip(("x_noisy", "target"), out, ref):
        assert_close(a, e, rtol=rtol, atol=atol, what=f"{backend} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(300, 2), (3, 5, 7, 11), (2, 3, 20, 20)])
def test_sampled_pair_matches_reference(backend, shape):
    x = data(shape, torch.float32)
    sigmas = torch.tensor([0.002, 0.0167, 0.0851, 0.3183, 0.9654, 2.5152, 5.8389, 12.3816, 24.4083, 45.3137, 80.0],
                          dtype=torch.float64)
    # iCT's log-normal probabilities for these 11 levels (docs/formulas.md section 2), and a zero entry.
    probs = torch.tensor([0.0626, 0.1817, 0.2455, 0.2135, 0.1424, 0.0806, 0.0, 0.0607, 0.0089, 0.0041],
                         dtype=torch.float64)
    cdf = probs.cumsum(0) / probs.sum()
    for offset in (0, 2 ** 33 + 1):
        out = run_on(backend, sampled_consistency_pair_op, x, seed_tensor(), sigmas, cdf, offset)
        ref = R.sampled_consistency_pair(x, seed_tensor(), sigmas, cdf, offset)
        assert torch.equal(out[5], ref[5]), f"{backend}: sampled indices differ"
        assert out[5].dtype == torch.int64 and not bool((out[5] == 6).any()), "an interval of probability 0 was drawn"
        for k, name in ((2, "sigma"), (3, "sigma_next"), (4, "weight")):
            assert out[k].dtype == torch.float32
            assert torch.equal(out[k], ref[k]), f"{backend}: {name} differs"
        for k, name in ((0, "x_cur"), (1, "x_next")):
            assert_close(out[k], ref[k], rtol=1e-6, atol=1e-6, what=f"{backend} {name}")


def test_inverse_cdf_rule():
    """The smallest i with u < cdf[i], clamped: ties go right, zero-probability intervals are skipped."""
    cdf = torch.tensor([0.25, 0.25, 0.5, 1.0], dtype=torch.float64)
    u = torch.tensor([0.0, 0.2499, 0.25, 0.4999, 0.5, 0.99999], dtype=torch.float64)
    assert R.inverse_cdf_index(cdf, u).tolist() == [0, 0, 2, 2, 3, 3]
    # A last entry below 1 (rounding) clamps to the last interval instead of running past the end.
    assert R.inverse_cdf_index(torch.tensor([0.5, 0.999], dtype=torch.float64),
                               torch.tensor([0.9995])).tolist() == [1]


@pytest.mark.parametrize("backend", BACKENDS)
def test_inverse_cdf_rule_in_kernels(backend):
    """Kernels follow the same rule on a table with ties, a zero interval and a short last entry."""
    x = torch.zeros(200, 1)
    sigmas = torch.arange(1, 7, dtype=torch.float64)
    cdf = torch.tensor([0.25, 0.25, 0.5, 0.75, 0.9999999], dtype=torch.float64)
    out = run_on(backend, sampled_consistency_pair_op, x, seed_tensor(7), sigmas, cdf, 0)
    ref = R.sampled_consistency_pair(x, seed_tensor(7), sigmas, cdf, 0)
    assert torch.equal(out[5], ref[5])
    assert not bool((out[5] == 1).any())


# ---- public functions: seeds, shapes, layouts, scalar/tensor sigma --------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_public_consistency_pair_uses_the_drawn_seed(backend):
    x = data((4, 3, 5, 5), torch.float32)
    sigma, sigma_next = per_sample(4), per_sample(4, low=2.0, high=5.0)
    got = run_on(backend, consistency_pair, x, sigma, sigma_next, generator=torch.Generator().manual_seed(11))
    seed = draw_seed("cpu", torch.Generator().manual_seed(11))
    ref = R.consistency_pair(x, seed, sigma, sigma_next, 75, 0)
    for a, e in zip(got, ref):
        assert_close(a, e, rtol=1e-6, atol=1e-6, what=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_and_scalar_forms(backend):
    base = data((5, 6, 7), torch.float32)
    x = base.transpose(1, 2)[:, ::2]  # [5, 4, 6], non-contiguous
    assert not x.is_contiguous()
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    sig = per_sample(5)
    cases = [
        (0.5, 2.0),                                   # scalars
        (sig, 3.0),                                   # a [B] tensor and a scalar
        (torch.tensor(0.5), sig.view(5, 1, 1)),       # a 0-d tensor and [B, 1, 1]
    ]
    for sigma, sigma_next in cases:
        got = run_on(backend, consistency_pair, x, sigma, sigma_next, generator=g())
        s0 = (sigma if isinstance(sigma, torch.Tensor) else torch.tensor(sigma)).reshape(-1).expand(5)
        s1 = (sigma_next if isinstance(sigma_next, torch.Tensor) else torch.tensor(sigma_next)).reshape(-1).expand(5)
        want = R.consistency_pair(x.contiguous(), draw_seed("cpu", g()), s0.float(), s1.float(), 24, 0)
        for a, e in zip(got, want):
            assert a.is_contiguous() and a.shape == x.shape
            assert_close(a, e, rtol=1e-6, atol=1e-6, what=f"{backend} sigma={type(sigma).__name__}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_add_noise_public_per_channel_offsets(backend):
    """o is element b*C + c of STREAM_OFFSET, constant over a channel's spatial positions."""
    b, c, h, w = 3, 4, 5, 6
    x = torch.zeros(b, c, h, w)
    got_noisy, target = run_on(backend, add_noise, x, 1.0, offset_noise=0.5,
                               generator=torch.Generator().manual_seed(3))
    seed = int(draw_seed("cpu", torch.Generator().manual_seed(3)).item())
    z = normal_stream(x.numel(), seed, STREAM_NOISE).view(b, c, h, w)
    o = normal_stream(b * c, seed, STREAM_OFFSET).view(b, c, 1, 1)
    assert_close(target, z + 0.5 * o, rtol=1e-6, atol=1e-6, what=backend)
    assert_close(got_noisy, target, rtol=0, atol=0, what="x_noisy = target when x = 0, sigma = 1")


def test_add_noise_perturbation_is_not_in_the_target():
    x = torch.zeros(2, 3, 8, 8)
    noisy, target = add_noise(x, 2.0, input_perturbation=0.1, generator=torch.Generator().manual_seed(9))
    seed = int(draw_seed("cpu", torch.Generator().manual_seed(9)).item())
    z = normal_stream(x.numel(), seed, STREAM_NOISE).view_as(x)
    xi = normal_stream(x.numel(), seed, STREAM_PERTURBATION).view_as(x)
    assert_close(target, z, rtol=1e-6, atol=1e-6, what="target = eps")
    assert_close(noisy, 2.0 * (z + 0.1 * xi), rtol=1e-6, atol=1e-6, what="x_noisy")


# ---- one shared z; the stream's statistics --------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_pair_shares_one_z(backend):
    x = data((6, 3, 7, 9), torch.float64)
    sigma, sigma_next = per_sample(6, torch.float64, low=0.1), per_sample(6, torch.float64, low=2.0, high=80.0)
    x_cur, x_next = run_on(backend, consistency_pair, x, sigma, sigma_next,
                           generator=torch.Generator().manual_seed(4))
    view = (-1, 1, 1, 1)
    z_cur = (x_cur - x) / sigma.view(view)
    z_next = (x_next - x) / sigma_next.view(view)
    assert_close(z_next, z_cur, rtol=1e-9, atol=1e-9, what="the same z in both outputs")
    assert_close(x_next - x_cur, (sigma_next - sigma).view(view) * z_cur, rtol=1e-9, atol=1e-9,
                 what="x_next - x_cur = (sigma_next - sigma) z")


def test_cpu_stream_agrees_with_portable_stream():
    """The CPU kernel's vectorised normals (normal_stream_cpu.h) against philox.h's normal4 (libm):
    within 1e-6 over 2^20 elements, and the right elements at an odd offset."""
    n = 1 << 20
    one = torch.ones(1)
    z, _ = run_on("cpu", consistency_pair_op, torch.zeros(n), seed_tensor(), one, one, n, 0)
    ref = noisefast.randn(n, seed=SEED)
    assert_close(z, ref, rtol=0, atol=1e-6, what="vectorised vs scalar normals")
    z, _ = run_on("cpu", consistency_pair_op, torch.zeros(999), seed_tensor(), one, one, 999, 2 ** 40 + 3)
    assert_close(z, noisefast.randn(999, seed=SEED, offset=2 ** 40 + 3), rtol=0, atol=1e-6, what="offset")


def test_statistics_of_z():
    n = 1 << 20
    x = torch.zeros(16, n // 16)
    x_cur, x_next = consistency_pair(x, 2.0, 3.0, generator=torch.Generator().manual_seed(21))
    z = (x_cur / 2.0).double().reshape(-1)
    se = 1 / math.sqrt(n)
    assert abs(z.mean().item()) < 5 * se
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2) * se
    assert abs((z.abs() < 1).double().mean().item() - 0.682689492) < 5 * math.sqrt(0.2171 / n)
    assert abs((z ** 3).mean().item()) < 5 * math.sqrt(15 / n)            # no skew
    assert abs((z ** 4).mean().item() - 3) < 5 * math.sqrt(96 / n)        # Gaussian kurtosis
    # Neighbouring elements (Box-Muller pairs, block boundaries) are uncorrelated.
    for lag in (1, 2, 4):
        assert abs((z[:-lag] * z[lag:]).mean().item()) < 5 * se


def test_statistics_of_add_noise():
    b, c, h, w = 64, 4, 32, 32
    x = torch.zeros(b, c, h, w)
    noisy, target = add_noise(x, 1.0, input_perturbation=0.5, offset_noise=0.7,
                              generator=torch.Generator().manual_seed(8))
    target, noisy = target.double(), noisy.double()
    xi = (noisy - target) / 0.5
    n = target.numel()
    # Per-(sample, channel) means of the target: offset 0.7 o with o ~ N(0, 1), plus z's mean.
    row_means = target.mean(dim=(2, 3)).reshape(-1)
    assert abs(row_means.var().item() - (0.49 + 1 / (h * w))) < 0.15
    within = target - target.mean(dim=(2, 3), keepdim=True)
    assert abs(within.var().item() - 1) < 0.01
    assert abs(xi.var().item() - 1) < 0.01
    assert abs((xi * within).mean().item()) < 5 / math.sqrt(n)  # xi independent of z


# ---- low precision, empty tensors, errors --------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_rule(backend, dtype):
    shape = (4, 3, 9, 11)
    x64 = data(shape, torch.float64)
    x = x64.to(dtype)
    sigma, sigma_next = per_sample(4, low=0.5, high=2.0), per_sample(4, low=3.0, high=80.0)
    x_cur, x_next = run_on(backend, consistency_pair_op, x, seed_tensor(), sigma, sigma_next, x.numel() // 4, 0)
    z = normal_stream(x.numel(), SEED, STREAM_NOISE).view(shape)
    view = (-1, 1, 1, 1)
    for got, s, name in ((x_cur, sigma, "x_cur"), (x_next, sigma_next, "x_next")):
        exact = x.double() + s.double().view(view) * z.double()
        eager = x + s.to(dtype).view(view) * z.to(dtype)
        assert_low_precision_rule(got, eager, exact, what=f"{backend} {dtype} {name}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    x = torch.empty(0, 3, 4, 4)
    cur, nxt = run_on(backend, consistency_pair, x, torch.empty(0), torch.empty(0))
    assert cur.shape == x.shape and nxt.shape == x.shape
    noisy, target = run_on(backend, add_noise, x, torch.empty(0), input_perturbation=0.1, offset_noise=0.1)
    assert noisy.shape == x.shape
    x = torch.empty(4, 0)
    cur, nxt = run_on(backend, consistency_pair, x, torch.ones(4), torch.ones(4))
    assert cur.shape == (4, 0)
    sigmas = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    cdf = torch.tensor([0.5, 1.0], dtype=torch.float64)
    out = run_on(backend, sampled_consistency_pair, x, sigmas, cdf)
    assert out.index.shape == (4,) and bool((out.sigma_next > out.sigma).all())
    out = run_on(backend, sampled_consistency_pair, torch.empty(0, 2), sigmas, cdf)
    assert out.x_cur.shape == (0, 2) and out.index.shape == (0,)


def test_errors_name_the_argument():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="sigma must be finite and >= 0"):
        consistency_pair(x, -1.0, 1.0)
    with pytest.raises(ValueError, match="sigma_next must be finite"):
        consistency_pair(x, 1.0, float("nan"))
    with pytest.raises(ValueError, match="sigma_next must be finite and >= 0 everywhere"):
        consistency_pair(x, 1.0, torch.tensor([1.0, float("inf"), 1.0, 1.0]))
    with pytest.raises(ValueError, match="sigma must be finite and >= 0 everywhere, found -0.5"):
        consistency_pair(x, torch.tensor([1.0, -0.5, 1.0, 1.0]), 1.0)
    with pytest.raises(ValueError, match="sigma must be a number or a tensor of shape \\[B\\]"):
        consistency_pair(x, torch.ones(3), 1.0)
    with pytest.raises(ValueError, match="sigma_next must be a number or a tensor of shape"):
        consistency_pair(x, 1.0, torch.ones(4, 3))
    with pytest.raises(TypeError, match="x must be float32"):
        consistency_pair(torch.ones(4, 3, dtype=torch.int64), 1.0, 2.0)
    with pytest.raises(TypeError, match="x must be"):
        consistency_pair(torch.ones(4, 3, dtype=torch.complex64), 1.0, 2.0)
    with pytest.raises(TypeError, match="sigma must be a float tensor"):
        consistency_pair(x, torch.ones(4, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match="alpha must be finite everywhere"):
        add_noise(x, 1.0, alpha=torch.tensor([1.0, 1.0, float("nan"), 1.0]))
    with pytest.raises(ValueError, match="input_perturbation must be finite and >= 0"):
        add_noise(x, 1.0, input_perturbation=-0.1)
    with pytest.raises(ValueError, match="offset_noise needs x of shape \\[B, C, ...\\]"):
        add_noise(torch.randn(5), 1.0, offset_noise=0.1)
    with pytest.raises(ValueError, match="cdf must be nondecreasing"):
        sampled_consistency_pair(x, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.7, 0.6]))
    with pytest.raises(ValueError, match="need n >= 2 sigmas and n - 1 cdf values"):
        sampled_consistency_pair(x, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1.0]))


# ---- autograd, opcheck, torch.compile -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients(backend):
    x = data((3, 2, 5), torch.float64).requires_grad_()
    sigma = per_sample(3, torch.float64, low=0.5).requires_grad_()
    sigma_next = per_sample(3, torch.float64, low=2.0, high=4.0).requires_grad_()
    seed = seed_tensor()
    with noisefast.use_backend(backend):
        torch.autograd.gradcheck(lambda a, s, t: consistency_pair_op(a, seed, s, t, 10, 7),
                                 (x, sigma, sigma_next), fast_mode=True)
        alpha = per_sample(3, torch.float64, low=0.2, high=0.9).requires_grad_()
        torch.autograd.gradcheck(lambda a, al, s: add_noise_op(a, seed, al, s, 0.1, 0.2, 10, 5, 7),
                                 (x, alpha, sigma), fast_mode=True)
        # The identity-like gradient to x through both outputs, and through the fused op.
        xf = data((3, 2, 5), torch.float32).requires_grad_()
        cur, nxt = consistency_pair(xf, 0.5, 2.0)
        (cur.sum() + 2 * nxt.sum()).backward()
        assert torch.equal(xf.grad, torch.full_like(xf, 3.0))
        xf.grad = None
        out = sampled_consistency_pair(xf, torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64),
                                       torch.tensor([0.5, 1.0], dtype=torch.float64))
        (out.x_cur.sum() + 2 * out.x_next.sum()).backward()
        assert torch.equal(xf.grad, torch.full_like(xf, 3.0))


def test_sigma_gradient_is_sum_of_grad_times_z():
    x = torch.zeros(4, 8)
    sigma = torch.full((4,), 2.0, requires_grad=True)
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    x_cur, _ = consistency_pair(x, sigma, 1.0, generator=torch.Generator().manual_seed(6))
    (x_cur * w).sum().backward()
    z = x_cur.detach() / 2.0
    assert_close(sigma.grad, (w * z).sum(dim=1), rtol=1e-5, atol=1e-5, what="d/d sigma")


def test_opcheck():
    x = data((3, 4, 5), torch.float32)
    s = per_sample(3).requires_grad_()
    t = per_sample(3, low=2.0, high=3.0).requires_grad_()
    torch.library.opcheck(consistency_pair_op, (x.requires_grad_(), seed_tensor(), s, t, 20, 0))
    torch.library.opcheck(add_noise_op, (x, seed_tensor(), s, t, 0.1, 0.2, 20, 5, 0))
    sigmas = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    cdf = torch.tensor([0.2, 0.7, 1.0], dtype=torch.float64)
    torch.library.opcheck(sampled_consistency_pair_op, (x, seed_tensor(), sigmas, cdf, 0))


def test_compile_fullgraph_cpu():
    x = data((4, 3, 6), torch.float32)
    sigma, sigma_next = per_sample(4), per_sample(4, low=2.0, high=3.0)

    def step(x, sigma, sigma_next):
        x_cur, x_next = consistency_pair(x, sigma, sigma_next)
        noisy, target = add_noise(x, sigma, alpha=0.5, input_perturbation=0.1, offset_noise=0.1)
        return x_cur, x_next, noisy, target

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x_cur, x_next, noisy, target = compiled(x, sigma, sigma_next)
    view = (-1, 1, 1)
    assert_close((x_next - x) / sigma_next.view(view), (x_cur - x) / sigma.view(view), rtol=1e-4, atol=1e-4,
                 what="compiled: one z")
    assert noisy.shape == x.shape and not torch.equal(noisy, 0.5 * x)


# ---- on a GPU -------------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 11), (4, 3, 64, 64), (1000, 17)])
def test_cuda_kernels_match_reference(dtype, shape):
    x = data(shape, dtype).cuda()
    batch, channels = shape[0], shape[1]
    acc = math_dtype(dtype)
    sigma = per_sample(batch, acc).cuda()
    sigma_next = per_sample(batch, acc, low=2.0, high=80.0, seed=2).cuda()
    seed = seed_tensor().cuda()
    rtol, atol = tol(dtype)
    inner = x.numel() // batch
    for offset in OFFSETS:
        out = consistency_pair_op(x, seed, sigma, sigma_next, inner, offset)
        ref = R.consistency_pair(x, seed, sigma, sigma_next, inner, offset)
        for a, e in zip(out, ref):
            assert_close(a, e, rtol=rtol, atol=atol, what=f"cuda consistency_pair offset={offset}")
    args = (sigma / 100, sigma, 0.1, 0.2, inner, x.numel() // (batch * channels), 3)
    for a, e in zip(add_noise_op(x, seed, *args), R.add_noise(x, seed, *args)):
        assert_close(a, e, rtol=rtol, atol=atol, what="cuda add_noise")
    sigmas = torch.linspace(0.002, 80.0, 41, dtype=torch.float64, device="cuda")
    cdf = torch.linspace(0.0, 1.0, 41, dtype=torch.float64, device="cuda")[1:] ** 0.5
    out = sampled_consistency_pair_op(x, seed, sigmas, cdf, 0)
    ref = R.sampled_consistency_pair(x, seed, sigmas, cdf, 0)
    assert torch.equal(out[5], ref[5]) and torch.equal(out[4], ref[4])
    assert_close(out[0], ref[0], rtol=rtol, atol=max(atol, 1e-5), what="cuda sampled pair")


@pytest.mark.cuda
def test_cuda_past_2_pow_31_elements():
    """Element indices beyond int32: the last elements of a 2^31 + 5 element tensor."""
    n = 2 ** 31 + 5
    x = torch.zeros(n, dtype=torch.float16, device="cuda")
    one = torch.ones(1, device="cuda")
    seed = seed_tensor().cuda()
    z, _ = consistency_pair_op(x, seed, one, one, n, 0)
    del x
    tail = normal_stream(1000, SEED, STREAM_NOISE, n - 1000, device="cuda")
    assert_close(z[-1000:], tail.half(), rtol=2 ** -10, atol=1e-3, what="tail past 2^31")


def test_number_arguments_are_not_read_back_from_the_device(monkeypatch):
    """Numbers are validated on the host; only user tensors are read back (a sync on CUDA)."""
    import noisefast.ops.perturbation as perturbation

    calls = []

    def recording(values, name):
        calls.append(name)

    monkeypatch.setattr(perturbation, "check_nonnegative_values", recording)
    monkeypatch.setattr(perturbation, "check_finite_values", recording)
    x = torch.randn(4, 3)
    consistency_pair(x, 0.5, 1.0)
    add_noise(x, 0.5, alpha=0.9, input_perturbation=0.1)
    assert calls == []
    consistency_pair(x, torch.full((4,), 0.5), 1.0)
    add_noise(x, torch.full((4,), 0.5))  # alpha is the number 1.0: only sigma is read
    assert calls == ["sigma", "sigma_next", "sigma"]
    calls.clear()
    add_noise(x, torch.full((4,), 0.5), alpha=torch.full((4,), 0.9))
    assert calls == ["alpha", "sigma"]


@pytest.mark.parametrize("alpha", [float("nan"), float("inf")])
def test_non_finite_number_alpha_is_an_error(alpha):
    with pytest.raises(ValueError, match="alpha"):
        add_noise(torch.zeros(2, 3), 0.5, alpha=alpha)
