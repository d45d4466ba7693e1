"""The eager shortcuts that keep small-tensor calls cheap (issue #13, item 13) give exactly what the
general path gives: a 0-d CPU std read as a number, the identity-gradient autograd of
gaussian_noise, GaussianNoise's magnitude formed on the host, the shared constant vectors of
per-sample arguments. Each is compared bit for bit with the path it replaces,
on every dtype; the speed itself is measured by benchmarks/bench_overhead.py, not here."""
from __future__ import annotations

import pytest
import torch

import noisefast
from noisefast import schedules as S
from noisefast._scalars import constant_vector
from noisefast.ops import gaussian_noise as gaussian_noise_module
from noisefast.ops.gaussian_noise import KERNELS as GAUSSIAN_NOISE, add_gaussian_noise
from noisefast.random import draw_seed

from helpers import ALL_FLOAT_DTYPES


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns (so that -0.0 and +0.0, or two NaNs, are told apart)."""
    view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(view)


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 5, 9)])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("std", [0.37, 0.0])
def test_identity_gradient_path_equals_the_general_autograd(dtype, shape, contiguous, std):
    base = torch.randn(*shape[:-1], shape[-1] * 2).to(dtype)
    base[..., 0] = -0.0
    x = base[..., ::2]
    x = (x.contiguous() if contiguous else x).detach().requires_grad_()
    seed = draw_seed("cpu", torch.Generator().manual_seed(3))
    shortcut = add_gaussian_noise(x, seed, std, None, 1, True)
    assert "IdentityGradient" in type(shortcut.grad_fn).__name__
    general = GAUSSIAN_NOISE.call(x, seed, std, None, 1, 0, 1, 1, True)  # the op's own setup_context/backward
    assert "gaussian_noise" in type(general.grad_fn).__name__
    assert torch.equal(_bits(shortcut), _bits(general)) and shortcut.is_contiguous()
    grad = torch.randn(shape).to(dtype)
    (got,) = torch.autograd.grad(shortcut, x, grad)
    (expected,) = torch.autograd.grad(general, x, grad)
    assert torch.equal(got, expected) and torch.equal(got, grad)


def test_identity_gradient_path_is_taken_only_when_x_alone_needs_a_gradient():
    x = torch.randn(3, 4, requires_grad=True)
    seed = draw_seed("cpu")
    name = lambda out: type(out.grad_fn).__name__  # noqa: E731
    # a scale without gradient (a per-channel std): identity for x, the same kernel
    scale = torch.tensor([0.5, 1.0, 2.0])
    shortcut = add_gaussian_noise(x, seed, 1.0, scale, 4, False)
    assert "IdentityGradient" in name(shortcut)
    assert torch.equal(shortcut, GAUSSIAN_NOISE.call(x, seed, 1.0, scale, 4, 0, 1, 1, False))
    # a scale that requires grad needs the noise in backward: the general autograd
    scale.requires_grad_()
    out = add_gaussian_noise(x, seed, 1.0, scale, 4, False)
    assert "gaussian_noise" in name(out)
    out.sum().backward()
    assert scale.grad is not None
    # under torch.no_grad there is no graph at all; x without grad neither
    with torch.no_grad():
        assert add_gaussian_noise(x, seed, 1.0, None, 1, True).grad_fn is None
    assert add_gaussian_noise(x.detach(), seed, 1.0, None, 1, True).grad_fn is None
    # traced by torch.compile: the custom op, fullgraph, the same noise
    compiled = torch.compile(lambda t: noisefast.gaussian_noise(t, 0.5), fullgraph=True)
    torch.manual_seed(0)
    out = compiled(x)
    torch.manual_seed(0)
    assert torch.equal(out, noisefast.gaussian_noise(x, 0.5))


@pytest.mark.parametrize("x_dtype", ALL_FLOAT_DTYPES)
@pytest.mark.parametrize("std", [0.3, 1.0 / 3.0, 7.0, 1e-30])
def test_gaussian_noise_magnitude_on_the_host_equals_the_factor_tensor_path(x_dtype, std):
    # The module forms std * factor on the host, in the kernels' arithmetic; the general path gives
    # the kernel std and a factor tensor. Factors that float32 rounds (1/3, 1/7) on purpose.
    layer = noisefast.GaussianNoise(std, schedule=lambda step: 1.0 / (3.0 + 4 * step))
    layer.step(1)
    x = torch.randn(4, 33).to(x_dtype)
    torch.manual_seed(5)
    shortcut = layer(x)
    std_value, scale, inner = gaussian_noise_module.noise_scale(x, layer.std)
    factor = layer._factor if x_dtype == torch.float64 else layer._factor_float32
    torch.manual_seed(5)
    expected = GAUSSIAN_NOISE.call(x, draw_seed(x.device), std_value, factor.reshape(1), inner, 0, 1, 1, True)
    assert torch.equal(_bits(shortcut), _bits(expected))


def test_gaussian_noise_magnitude_follows_a_changed_std_and_the_step():
    layer = noisefast.GaussianNoise(0.5, schedule=S.linear(1.0, 0.0, 10))
    x = torch.zeros(1000)
    layer.step(5)  # factor 0.5: std 0.25
    assert (layer(x).std().item() - 0.25) < 0.03 and layer._host_sigma is not None
    layer.std = 2.0  # a new number: the products were formed with the old one
    assert abs(layer(x).std().item() - 1.0) < 0.1
    layer.num_steps = 10  # factor 0: no noise at all
    assert torch.equal(layer(x), x)


def test_constant_vectors_are_shared_read_only_and_keep_the_sign_of_zero():
    a = constant_vector(1.0, 4, torch.float32, torch.device("cpu"))
    assert a is constant_vector(1.0, 4, torch.float32, torch.device("cpu"))
    assert a is not constant_vector(1.0, 5, torch.float32, torch.device("cpu"))
    assert a is not constant_vector(1.0, 4, torch.float64, torch.device("cpu"))
    negative_zero = constant_vector(-0.0, 4, torch.float32, torch.device("cpu"))
    assert torch.equal(_bits(negative_zero), _bits(torch.full((4,), -0.0)))
    assert torch.equal(_bits(constant_vector(0.0, 4, torch.float32, torch.device("cpu"))), _bits(torch.zeros(4)))
    # add_noise with a number alpha and per-sample sigma (the vector of alphas is one of these)
    x = torch.randn(4, 6)
    sigma = torch.rand(4) + 0.5
    torch.manual_seed(2)
    noisy, target = noisefast.add_noise(x, sigma, alpha=0.5)
    torch.manual_seed(2)
    noisy_t, target_t = noisefast.add_noise(x, sigma, alpha=torch.full((4,), 0.5))
    assert torch.equal(noisy, noisy_t) and torch.equal(target, target_t)
    assert torch.equal(a, torch.ones(4))  # nothing wrote the shared vector


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
@pytest.mark.parametrize("alpha", ["number", "tensor"])
def test_perturbation_input_gradient_paths_equal_the_general_autograd(dtype, alpha):
    # x alone requires grad: consistency_pair's identity and add_noise's alpha through the lighter
    # Functions; the values and gradients must be the general autograd's, bit for bit.
    from noisefast.ops.perturbation import ADD_NOISE_KERNELS, PAIR_KERNELS, per_sample_arguments
    x = torch.randn(4, 3, 5).to(dtype).requires_grad_()
    sigma, sigma_next = torch.rand(4) + 0.5, torch.rand(4) + 2.0
    alpha_value = 0.8 if alpha == "number" else torch.rand(4) + 0.5
    torch.manual_seed(11)
    pair = noisefast.consistency_pair(x, sigma, sigma_next)
    torch.manual_seed(11)
    noisy, target = noisefast.add_noise(x, sigma, alpha=alpha_value, input_perturbation=0.1)
    assert all("Gradient" in type(t.grad_fn).__name__ for t in (*pair, noisy))
    torch.manual_seed(11)
    (sig, sig_next), inner = per_sample_arguments(x, {"sigma": sigma, "sigma_next": sigma_next}, nonnegative=())
    general_pair = PAIR_KERNELS.call(x, draw_seed("cpu"), sig, sig_next, inner, 0, False)
    torch.manual_seed(11)
    (alpha_t, sigma_t), sample_inner = per_sample_arguments(x, {"alpha": alpha_value, "sigma": sigma},
                                                            nonnegative=("sigma",))
    general_noise = ADD_NOISE_KERNELS.call(x, draw_seed("cpu"), alpha_t, sigma_t, 0.1, 0.0, sample_inner, 1, 0,
                                           False)
    assert "consistency_pair" in type(general_pair[0].grad_fn).__name__
    for got, expected in zip((*pair, noisy, target), (*general_pair, *general_noise)):
        assert torch.equal(_bits(got), _bits(expected))
    grads = [torch.randn_like(x) for _ in range(3)]
    got = torch.autograd.grad([pair[0], pair[1], noisy], x, grads)
    expected = torch.autograd.grad([general_pair[0], general_pair[1], general_noise[0]], x, grads)
    assert torch.equal(got[0], expected[0])
    # one output unused: its gradient is None, not zeros
    (only_cur,) = torch.autograd.grad(noisefast.consistency_pair(x, sigma, sigma_next)[0].sum(), x)
    assert torch.equal(only_cur, torch.ones_like(x))
    # sigma that requires grad: the general autograd, which regenerates the noise
    sigma.requires_grad_()
    assert "consistency_pair" in type(noisefast.consistency_pair(x, sigma, sigma_next)[0].grad_fn).__name__
    assert "add_noise" in type(noisefast.add_noise(x, sigma)[0].grad_fn).__name__
