"""The counters of the stateful helpers as device tensors (issue #14, part 3): EMA decays for every
warm-up and the EDM2 power profiles, the gradient-noise std and the noise schedules' magnitudes,
computed on the device from a step tensor, equal the host arithmetic of the eager path; the
counters advance inside compiled code without recompiling, and eager and compiled calls mix."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

import noisefast
from noisefast import schedules as S
from noisefast._compile import StepCounter, mark_static

STEPS = [0, 1, 2, 3, 4, 10, 11, 57, 1000, 123456]

EMAS = {
    "constant": dict(decay=0.999),
    "ramp": dict(decay=0.9999, warmup="ramp"),
    "ramp_after": dict(decay=0.99, warmup="ramp", update_after_step=3, min_decay=0.2),
    "inverse_gamma": dict(decay=0.9999, warmup="inverse_gamma", power=0.75, inv_gamma=2.0),
    "callable": dict(decay=0.995, warmup=lambda u: 1 - 1 / (u + 2)),
    "edm2": dict(sigma_rels=(0.05, 0.10)),
    "edm2_after": dict(sigma_rels=(0.05, 0.2), update_after_step=5),
}


@pytest.mark.parametrize("config", list(EMAS))
def test_ema_decays_on_the_device_equal_the_host_decays(config):
    ema = noisefast.EMA([torch.zeros(3)], **EMAS[config])
    for step in STEPS:
        on_device = ema.decays_on_device(torch.tensor(step))
        assert on_device.dtype == torch.float64 and on_device.shape == (ema.num_profiles,)
        torch.testing.assert_close(on_device, torch.tensor(ema.decays_at(step), dtype=torch.float64),
                                   rtol=1e-15, atol=0)


@pytest.mark.parametrize("config", ["ramp_after", "edm2"])
def test_compiled_ema_updates_equal_eager_updates(config):
    """A compiled EMA.update advances its counters on the device: one graph for every step, the
    shadows of the eager EMA, and eager updates continue from the compiled ones."""
    torch._dynamo.reset()
    weights = [torch.randn(4, 3), torch.randn(5)]
    eager, compiled = (noisefast.EMA(weights, **EMAS[config]) for _ in range(2))
    counter = CompileCounter()
    update = torch.compile(compiled.update, backend=counter, fullgraph=True)
    for step in range(12):
        with torch.no_grad():
            for w in weights:
                w.add_(0.1 * torch.randn_like(w))
        eager.update()
        if step < 8:
            update()
        else:
            compiled.update()  # eager again: reads the device counter once, then host arithmetic
        for a, b in zip(eager.averaged().values(), compiled.averaged().values()):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        assert compiled.step == eager.step == step + 1 and compiled.num_updates == step + 1
    assert counter.frame_count == 1


def test_ema_update_takes_a_step_tensor():
    ema, twin = noisefast.EMA([torch.ones(3)], warmup="ramp"), noisefast.EMA([torch.ones(3)], warmup="ramp")
    ema.update(torch.tensor(40))
    twin.update(40)
    assert ema.step == twin.step == 40
    with pytest.raises(ValueError, match="step"):
        ema.update(torch.tensor(-1))
    with pytest.raises(TypeError, match="step"):
        ema.update(torch.tensor(1.5))


def test_gradient_noise_step_compiled_equals_eager():
    torch._dynamo.reset()
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.zeros(6, 5)), torch.nn.Parameter(torch.zeros(7))]
        noise = noisefast.GradientNoise(params, eta=0.3, gamma=0.55)
        counter = CompileCounter()
        step = torch.compile(noise.step, backend=counter, fullgraph=True) if compiled else noise.step
        stds = []
        for _ in range(6):
            for p in params:
                p.grad = torch.zeros_like(p)
            stds.append(float(step()))
        assert noise.t == 6 and stds == pytest.approx([noise.std(t) for t in range(6)], rel=1e-15)
        runs.append([p.grad.clone() for p in params])
        if compiled:
            assert counter.frame_count == 1
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b)


def _reduced_adaptive():
    schedule = S.adaptive(0.8, factor=0.5, base=S.cosine(1.0, 0.25, 20))
    schedule.reduce()
    return schedule


SCHEDULES = [S.constant(0.3), S.linear(1.0, 0.0, 20), S.polynomial(1.0, 0.2, 20, power=3.0), S.cosine(1.0, 0.1, 20),
             S.interval(S.linear(1.0, 0.0, 30), every=3, duration=2), S.interval(0.7, every=4, start=2, off=0.1),
             S.adaptive(0.6), _reduced_adaptive(), S.interval(lambda step: 0.5 + 0 * step, every=2)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_schedule_at_a_step_tensor_equals_the_host_value(schedule):
    for step in [0, 1, 2, 5, 19, 20, 21, 37, 1000]:
        value = schedule.at(torch.tensor(step))
        assert value.dtype == torch.float64 and value.dim() == 0
        assert float(value) == pytest.approx(schedule(step), rel=1e-15, abs=1e-300)


def test_gradient_noise_schedule_is_traced():
    """GradientNoise(schedule=...) compiled: sigma_t times schedule(t), computed on the device."""
    torch._dynamo.reset()
    params = [torch.nn.Parameter(torch.zeros(4))]
    noise = noisefast.GradientNoise(params, eta=0.2, schedule=S.linear(1.0, 0.5, 4))
    counter = CompileCounter()
    step = torch.compile(noise.step, backend=counter, fullgraph=True)
    for t in range(6):
        params[0].grad = torch.zeros(4)
        assert float(step()) == pytest.approx(noise.std(t), rel=1e-15)
    assert counter.frame_count == 1


def test_set_noise_step_with_a_tensor_and_eager_steps_after_compiled_ones():
    layer = noisefast.GaussianNoise(0.5, schedule=S.linear(1.0, 0.0, 10))
    noisefast.set_noise_step(layer, torch.tensor(4))
    assert layer.num_steps == 4 and float(layer.magnitude()) == pytest.approx(0.5 * 0.6)
    torch.compile(layer.step, backend="eager", fullgraph=True)()
    assert float(layer.magnitude()) == pytest.approx(0.5 * 0.5)
    layer.step()  # eager: reads the counter once, then host arithmetic again
    assert layer.num_steps == 6 and float(layer.magnitude()) == pytest.approx(0.5 * 0.4)
    with pytest.raises(ValueError, match="step"):
        noisefast.set_noise_step(layer, torch.tensor(-2))


def test_step_counter():
    counter = StepCounter(3)
    counter.advance()
    assert counter.value == 4 and int(counter.tensor) == 4
    counter.set(torch.tensor(9))
    assert counter._host is None and counter.value == 9
    compiled = torch.compile(counter.advance, backend="eager", fullgraph=True)
    compiled()
    compiled()
    assert counter.value == 11 and int(counter.tensor) == 11
    probe, marked = torch.zeros(1), torch.zeros(1)
    torch._dynamo.mark_static_address(probe)
    mark_static(marked)
    assert marked._dynamo_static_input_type == probe._dynamo_static_input_type
