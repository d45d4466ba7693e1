"""GradientNoise: the annealed-variance schedule, exact noise, statistics, ranks in lockstep, state."""
import math

import pytest
import torch

from noisefast.gradient_noise import GradientNoise
from noisefast.reference.foreach_gaussian_noise import stream_bases
from noisefast.reference.philox import normal_stream


def test_std_anneals_the_variance_not_the_std():
    gn = GradientNoise([torch.zeros(1)], eta=0.3, gamma=0.55)
    for t in (0, 1, 9, 99, 12345):
        assert gn.std(t) == pytest.approx(math.sqrt(0.3 / (1 + t) ** 0.55), rel=1e-12)
        assert gn.std(t) ** 2 == pytest.approx(0.3 / (1 + t) ** 0.55, rel=1e-12)
    # the wrong port (std = eta / (1+t)^gamma) differs already at t = 0
    assert gn.std(0) == pytest.approx(math.sqrt(0.3)) and gn.std(0) != pytest.approx(0.3)
    assert gn.std() == gn.std(0)


def test_step_adds_exact_stream_noise_and_advances_t():
    p, q, r = (torch.nn.Parameter(torch.zeros(s)) for s in ((3, 5), (7,), (2,)))
    p.grad, q.grad = torch.randn(3, 5), torch.randn(7)  # r.grad stays None
    before = [p.grad.clone(), q.grad.clone()]
    gn = GradientNoise([p, r, q], eta=1.0, gamma=0.55, generator=torch.Generator().manual_seed(3))
    gn.t = 4
    sigma = gn.step()
    assert gn.t == 5 and r.grad is None
    assert sigma == pytest.approx(math.sqrt(1.0 / 5 ** 0.55))
    seed = torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(3)).item()
    bases = stream_bases([15, 7])
    for g, b, base in zip([p.grad, q.grad], before, bases):
        z = normal_stream(g.numel(), seed, 0, base).view(g.shape)
        torch.testing.assert_close(g, b + sigma * z, rtol=1e-6, atol=1e-6)


def test_variance_anneals_statistically():
    n = 300_000
    p = torch.nn.Parameter(torch.zeros(n))
    gn = GradientNoise([p], eta=0.3, gamma=0.55, generator=torch.Generator().manual_seed(0))
    for t in (0, 99):
        gn.t = t
        p.grad = torch.zeros(n)
        gn.step()
        var = p.grad.double().var().item()
        expected = 0.3 / (1 + t) ** 0.55
        assert abs(var - expected) < 5 * expected * math.sqrt(2 / n), (t, var, expected)
        wrong = (0.3 / (1 + t) ** 0.55) ** 2  # the variance of the "std anneals" misreading
        assert abs(var - wrong) > 50 * expected * math.sqrt(2 / n)


def test_identically_seeded_instances_add_identical_noise():
    """What data-parallel ranks need: the same seed -> the same noise, step after step."""
    torch.manual_seed(0)
    model_a = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model_b = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    model_b.load_state_dict(model_a.state_dict())
    gn_a = GradientNoise(model_a.parameters(), generator=torch.Generator().manual_seed(1234))
    gn_b = GradientNoise(model_b.parameters(), generator=torch.Generator().manual_seed(1234))
    x = torch.randn(16, 4)
    for _ in range(3):
        for m, gn in ((model_a, gn_a), (model_b, gn_b)):
            m.zero_grad()
            m(x).square().sum().backward()
            gn.step()
        for pa, pb in zip(model_a.parameters(), model_b.parameters()):
            assert torch.equal(pa.grad, pb.grad)
    clean = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
    clean.load_state_dict(model_a.state_dict())
    clean(x).square().sum().backward()
    assert not torch.equal(clean[0].weight.grad, model_a[0].weight.grad)


def test_param_groups_mixed_dtypes_and_eta_zero():
    a = torch.nn.Parameter(torch.zeros(10, dtype=torch.bfloat16))
    b = torch.nn.Parameter(torch.zeros(10, dtype=torch.float64))
    a.grad, b.grad = torch.zeros_like(a), torch.zeros_like(b)
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    GradientNoise(opt.param_groups, eta=1.0).step()
    assert (a.grad != 0).all() and (b.grad != 0).all() and a.grad.dtype == torch.bfloat16
    a.grad.zero_()
    gn = GradientNoise([a], eta=0.0)
    assert gn.step() == 0.0 and torch.equal(a.grad, torch.zeros_like(a)) and gn.t == 1


def test_state_dict_round_trip_and_validation():
    gn = GradientNoise([torch.zeros(1)], eta=0.01, gamma=0.5)
    gn.t = 17
    state = gn.state_dict()
    other = GradientNoise([torch.zeros(1)])
    other.load_state_dict(state)
    assert (other.t, other.eta, other.gamma) == (17, 0.01, 0.5) and other.std() == gn.std()
    for bad, exc in [({"t": 1, "eta": 0.3}, ValueError), ({"t": 1, "eta": 0.3, "gamma": 0.5, "x": 1}, ValueError),
                     ({"t": -1, "eta": 0.3, "gamma": 0.5}, ValueError), ({"t": 1.5, "eta": 0.3, "gamma": 0.5}, TypeError),
                     ({"t": 1, "eta": -0.3, "gamma": 0.5}, ValueError),
                     ({"t": 3, "eta": 0.3, "gamma": float("nan")}, ValueError), ([1, 2], TypeError)]:
        with pytest.raises(exc):
            other.load_state_dict(bad)
        assert (other.t, other.eta, other.gamma) == (17, 0.01, 0.5), "changed by a failed load"


def test_bad_arguments():
    with pytest.raises(ValueError, match="eta"):
        GradientNoise([torch.zeros(1)], eta=-1.0)
    with pytest.raises(ValueError, match="gamma"):
        GradientNoise([torch.zeros(1)], gamma=float("inf"))
    with pytest.raises(TypeError, match="params"):
        GradientNoise(torch.zeros(3))
    with pytest.raises(TypeError, match="params"):
        GradientNoise([torch.zeros(1), 3])
    p = torch.zeros(2)
    with pytest.raises(ValueError, match="params"):
        GradientNoise([p, p])
    with pytest.raises(ValueError, match="params"):
        GradientNoise([{"lr": 0.1}])
    with pytest.raises(TypeError, match="generator"):
        GradientNoise([p], generator=0)
    with pytest.raises(ValueError, match="step"):
        GradientNoise([p]).std(-1)
