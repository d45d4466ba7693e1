"""WeightNoise: noisy forward from the exact stream, gradients to the clean weights, clean weights
untouched, eval/std=0 clean, schedule, filter, tied weights, state_dict."""
import math

import pytest
import torch
from torch import nn

from noisefast.regularizers import ScheduledNoise
from noisefast.reference.foreach_gaussian_noise import stream_bases
from noisefast.reference.philox import normal_stream
from noisefast.weight_noise import WeightNoise, weights_only

from helpers import assert_schedule_steps_without_recompile


def drawn_seed(seed):
    return torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(seed)).item()


def hand_noisy(named, std, seed):
    """{name: w + std * z} from the reference stream, in the foreach_gaussian_noise layout."""
    s = drawn_seed(seed)
    bases = stream_bases([p.numel() for _, p in named])
    return {name: (p.detach() + std * normal_stream(p.numel(), s, 0, b).view(p.shape)).requires_grad_()
            for (name, p), b in zip(named, bases)}


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))


class Probe(nn.Module):
    """Returns its parameters (times one): the output shows exactly what the forward saw."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(20, 50))
        self.b = nn.Parameter(torch.zeros(3))
        self.frozen = nn.Parameter(torch.zeros(5), requires_grad=False)

    def forward(self, x):
        return self.w * x, self.b * x, self.frozen * x


def test_is_a_scheduled_noise_module():
    assert isinstance(WeightNoise(mlp(), 0.1), ScheduledNoise)


def test_gradient_is_the_gradient_at_the_hand_built_noisy_weights():
    net = mlp()
    wn = WeightNoise(net, 0.1, generator=torch.Generator().manual_seed(7))
    x = torch.randn(4, 5)
    out = wn(x)
    out.square().sum().backward()
    noisy = hand_noisy(list(net.named_parameters()), 0.1, 7)
    ref_out = torch.func.functional_call(net, noisy, (x,))
    ref_out.square().sum().backward()
    torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.grad, noisy[name].grad, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(out, net(x))


def test_clean_weights_bit_identical_and_optimizer_uses_the_noisy_gradient():
    net = mlp()
    clean = {k: v.clone() for k, v in net.state_dict().items()}
    wn = WeightNoise(net, 0.05, generator=torch.Generator().manual_seed(1))
    x = torch.randn(8, 5)
    wn(x).sum().backward()
    wn(x).sum()  # a second forward without backward changes nothing either
    for k, v in net.state_dict().items():
        assert torch.equal(v, clean[k])
    grads = {n: p.grad.clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.step()
    for n, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), clean[n].add(grads[n], alpha=-0.1), rtol=1e-7, atol=1e-7)
    noisy = hand_noisy(list(zip(clean, [torch.nn.Parameter(v) for v in clean.values()])), 0.05, 1)
    torch.func.functional_call(mlp(), noisy, (x,)).sum().backward()
    for n in clean:
        torch.testing.assert_close(grads[n], noisy[n].grad, rtol=1e-6, atol=1e-6)


def test_eval_mode_and_std_zero_are_the_clean_module_bit_exactly():
    net = mlp()
    x = torch.randn(4, 5)
    wn = WeightNoise(net, 0.3)
    wn.eval()
    assert not net.training
    assert torch.equal(wn(x), net(x))
    for std in (0.0, torch.tensor(0.0)):
        wn = WeightNoise(net, std).train()
        out = wn(x)
        out.sum().backward()
        g = {n: p.grad.clone() for n, p in net.named_parameters()}
        net.zero_grad()
        ref = net(x)
        ref.sum().backward()
        assert torch.equal(out, ref)
        for n, p in net.named_parameters():
            assert torch.equal(g[n], p.grad)
        net.zero_grad()


def test_selection_filter_frozen_and_statistics():
    probe = Probe()
    wn = WeightNoise(probe, 0.5, generator=torch.Generator().manual_seed(2))
    w, b, frozen = wn(torch.tensor(1.0))
    assert torch.equal(frozen, torch.zeros(5))  # requires_grad=False: no noise
    assert abs(w.double().std().item() - 0.5) < 0.05 and (b != 0).all()
    assert [n for n, _ in wn.noisy_parameters()] == ["w", "b"]
    wn = WeightNoise(probe, 0.5, filter=weights_only)
    w, b, _ = wn(torch.tensor(1.0))
    assert torch.equal(b, torch.zeros(3)) and (w != 0).all()
    wn = WeightNoise(probe, 0.5, filter=lambda name, p: name == "b")
    w, b, _ = wn(torch.tensor(1.0))
    assert torch.equal(w, torch.zeros(20, 50)) and (b != 0).all()


def test_fresh_noise_each_forward_and_tensor_std():
    wn = WeightNoise(Probe(), torch.tensor(0.2))
    a = wn(torch.tensor(1.0))[0]
    b = wn(torch.tensor(1.0))[0]
    assert not torch.equal(a, b)
    assert abs(a.std().item() - 0.2) < 0.03


def test_schedule_factor_scales_the_noise():
    wn = WeightNoise(Probe(), 0.4, schedule=lambda step: 1.0 / (1 + step), generator=torch.Generator().manual_seed(3))
    wn.step()
    assert wn.current_std() == pytest.approx(0.2)
    w, b, _ = wn(torch.tensor(1.0))
    noisy = hand_noisy([("w", wn.module.w), ("b", wn.module.b)], 0.2, 3)
    torch.testing.assert_close(w, noisy["w"].detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, noisy["b"].detach(), rtol=1e-6, atol=1e-6)


def test_tied_weights_get_one_noise_draw():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.Linear(4, 4, bias=False)
            self.dec = nn.Linear(4, 4, bias=False)
            self.dec.weight = self.enc.weight

        def forward(self, x):
            return self.enc.weight * x, self.dec.weight * x

    m = Tied()
    wn = WeightNoise(m, 1.0)
    a, b = wn(torch.tensor(1.0))
    assert torch.equal(a, b) and not torch.equal(a, m.enc.weight)
    (a.sum() + 2 * b.sum()).backward()
    assert torch.equal(m.enc.weight.grad, torch.full((4, 4), 3.0))


def test_mixed_dtypes():
    net = nn.Sequential(nn.Linear(6, 6).to(torch.bfloat16))
    wn = WeightNoise(net, 0.1)
    out = wn(torch.randn(2, 6, dtype=torch.bfloat16))
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and net[0].weight.grad.dtype == torch.bfloat16


def test_state_dict_round_trip():
    wn = WeightNoise(mlp(), 0.1, schedule=lambda s: 1.0)
    wn.step(5)
    state = wn.state_dict()
    assert set(state) == {"module.0.weight", "module.0.bias", "module.2.weight", "module.2.bias", "_extra_state"}
    torch.manual_seed(9)
    other = WeightNoise(nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)), 0.1, schedule=lambda s: 1.0)
    other.load_state_dict(state)
    assert other.num_steps == 5
    for k, v in wn.module.state_dict().items():
        assert torch.equal(other.module.state_dict()[k], v)
    bare = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    bare.load_state_dict(wn.module.state_dict())  # the inner model saves and loads on its own
    tensor_std = WeightNoise(mlp(), torch.tensor(0.25))
    assert "std" in tensor_std.state_dict()


def test_bad_arguments():
    with pytest.raises(TypeError, match="module"):
        WeightNoise(lambda x: x, 0.1)
    with pytest.raises(ValueError, match="std"):
        WeightNoise(mlp(), -0.1)
    with pytest.raises(ValueError, match="std"):
        WeightNoise(mlp(), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="std"):
        WeightNoise(mlp(), torch.tensor(-0.1))
    with pytest.raises(TypeError, match="filter"):
        WeightNoise(mlp(), 0.1, filter="weight")
    with pytest.raises(TypeError, match="generator"):
        WeightNoise(mlp(), 0.1, generator=1)


def test_compile_fullgraph():
    net = mlp()
    clean = {k: v.clone() for k, v in net.state_dict().items()}
    compiled = torch.compile(WeightNoise(net, 0.1), fullgraph=True)
    x = torch.randn(4, 5)
    out = compiled(x)
    out.sum().backward()
    assert not torch.equal(out, net(x)) and net[0].weight.grad.shape == (7, 5)
    assert all(torch.equal(v, clean[k]) for k, v in net.state_dict().items())


def test_scheduled_weight_noise_does_not_recompile():
    from noisefast import schedules as S

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    noisy = WeightNoise(net, 0.1, schedule=S.linear(1.0, 0.0, 10))
    x = torch.randn(3, 4)
    assert_schedule_steps_without_recompile(noisy, noisy, x, steps=3)
    noisy.step(7)  # factor 0: the clean module's output
    torch.testing.assert_close(noisy(x), net(x), rtol=0, atol=0)


def test_unused_parameters_keep_no_gradient():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    net = TwoHeads()
    WeightNoise(net, 0.1)(torch.randn(4, 3)).sum().backward()
    assert net.used.weight.grad is not None
    assert net.unused.weight.grad is None and net.unused.bias.grad is None
