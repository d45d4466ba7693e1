"""noisefast.schedules.adaptive: the plateau rule against torch's ReduceLROnPlateau, reductions on
overuse, the noise modules that read it (GaussianNoise, WeightNoise, GradientNoise), its state in
state_dict, copies, and a compiled forward that does not recompile when the magnitude changes."""
from __future__ import annotations

import copy
import gc
import io
import weakref

import pytest
import torch

import noisefast
from noisefast import schedules as S


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("mode,threshold_mode,threshold", [("max", "rel", 1e-2), ("min", "rel", 1e-4),
                                                           ("max", "abs", 0.05), ("min", "abs", 0.0)])
@pytest.mark.parametrize("patience,cooldown", [(0, 0), (2, 1), (1, 3)])
def test_plateau_rule_is_reduce_lr_on_plateau(mode, threshold_mode, threshold, patience, cooldown):
    """The same metrics drive torch's ReduceLROnPlateau (on an lr starting at 1) and the schedule."""
    metrics = [0.5, 0.6, 0.6, 0.59, 0.61, 0.62, 0.3, 0.3, 0.7, 0.7, 0.69, 0.2, 0.2, 0.2, 0.9, 0.9, 0.9, 0.9]
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    torch_rule = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode=mode, factor=0.5, patience=patience, threshold=threshold, threshold_mode=threshold_mode,
        cooldown=cooldown, min_lr=0.1)
    schedule = S.adaptive(1.0, factor=0.5, min_value=0.1, patience=patience, mode=mode, threshold=threshold,
                          threshold_mode=threshold_mode, cooldown=cooldown)
    ours, theirs = [], []
    for m in metrics:
        torch_rule.step(m)
        schedule.step(m)
        theirs.append(optimizer.param_groups[0]["lr"])
        ours.append(schedule(0))
    assert ours == pytest.approx(theirs, rel=0, abs=1e-12)
    assert len(set(ours)) > 1  # the sequence does trigger reductions


def test_overuse_reduces_down_to_min_value_and_cooldown_skips():
    schedule = S.adaptive(1.0, factor=0.5, min_value=0.2, cooldown=1)
    assert schedule.step(overuse=False) is False and schedule(7) == 1.0
    assert schedule.step(overuse=True) is True and schedule(7) == 0.5
    assert schedule.step(overuse=True) is False and schedule(7) == 0.5  # cooldown
    assert schedule.step(overuse=True) is True and schedule(7) == 0.25
    schedule.step(overuse=False)
    assert schedule.step(overuse=True) is True and schedule(7) == 0.2  # the floor
    schedule.step(overuse=False)
    assert schedule.step(overuse=True) is False and schedule(7) == 0.2
    assert schedule.num_reductions == 3


def test_base_schedule_multiplies():
    cosine = S.cosine(1.0, 0.25, 100)
    schedule = S.adaptive(0.8, factor=0.5, base=cosine)
    for step in (0, 10, 50, 100, 150):
        assert schedule(step) == pytest.approx(0.8 * cosine(step), rel=1e-15)
    schedule.reduce()
    assert schedule(30) == pytest.approx(0.4 * cosine(30), rel=1e-15)


def test_gaussian_noise_reads_the_new_value_at_once():
    schedule = S.adaptive(1.0, factor=0.5, base=S.linear(1.0, 0.5, 10))
    layer = noisefast.GaussianNoise(0.3, schedule=schedule)
    layer.step(4)
    x = torch.randn(1000)
    schedule.step(overuse=True)
    assert layer._factor.item() == 0.5 * S.linear(1.0, 0.5, 10)(4)
    torch.manual_seed(3)
    out = layer(x)
    torch.manual_seed(3)
    expected = noisefast.gaussian_noise(x, 0.3 * layer._factor.item())
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-7)


def test_one_schedule_drives_several_modules():
    schedule = S.adaptive(1.0, factor=0.25)
    net = torch.nn.Linear(3, 3)
    weight = noisefast.WeightNoise(net, 0.1, schedule=schedule)
    activation = noisefast.GaussianNoise(0.2, schedule=schedule)
    grads = noisefast.GradientNoise(net.parameters(), eta=0.04, gamma=0.0, schedule=schedule)
    schedule.reduce()
    assert weight._factor.item() == activation._factor.item() == 0.25
    assert torch.equal(weight.magnitude(), torch.tensor(0.1 * 0.25, dtype=torch.float64))
    assert grads.std() == pytest.approx(0.2 * 0.25, rel=1e-15)


def test_gradient_noise_applies_the_scaled_std_exactly():
    schedule = S.adaptive(1.0, factor=0.5)
    p = torch.nn.Parameter(torch.zeros(257))
    p.grad = torch.zeros(257)
    noise = noisefast.GradientNoise([p], eta=0.09, gamma=0.0, schedule=schedule, generator=torch.Generator().manual_seed(4))
    schedule.reduce()
    noise.step()
    ref = torch.zeros(257)
    noisefast.foreach_gaussian_noise_([ref], 0.3 * 0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(p.grad, ref, rtol=0, atol=0)


def test_state_round_trips_through_the_module_state_dict():
    def build():
        schedule = S.adaptive(1.0, factor=0.5, patience=1)
        return torch.nn.Sequential(torch.nn.Linear(2, 2), noisefast.GaussianNoise(0.1, schedule=schedule)), schedule

    net, schedule = build()
    for metric in (0.5, 0.6, 0.55, 0.54):
        schedule.step(metric)
    net[1].step(3)
    state = roundtrip(net.state_dict())
    other, other_schedule = build()
    other.load_state_dict(state)
    assert other_schedule.state_dict() == schedule.state_dict()
    assert other_schedule(0) == 0.5 and other[1].num_steps == 3
    assert other[1]._factor.item() == 0.5
    # the loaded rule continues as the saved one would
    for metric in (0.4, 0.4):
        schedule.step(metric)
        other_schedule.step(metric)
    assert other_schedule.state_dict() == schedule.state_dict()


def test_gradient_noise_state_round_trip_and_bad_state_changes_nothing():
    schedule = S.adaptive(1.0, factor=0.5)
    p = torch.nn.Parameter(torch.zeros(3))
    noise = noisefast.GradientNoise([p], schedule=schedule)
    schedule.reduce()
    noise.t = 5
    state = roundtrip(noise.state_dict())
    fresh_schedule = S.adaptive(1.0, factor=0.5)
    fresh = noisefast.GradientNoise([p], schedule=fresh_schedule)
    fresh.load_state_dict(state)
    assert fresh.t == 5 and fresh_schedule.value == 0.5
    bad = dict(state, schedule=dict(state["schedule"], value=-1.0))
    with pytest.raises(ValueError, match="value"):
        fresh.load_state_dict(dict(bad, t=9))
    assert fresh.t == 5 and fresh_schedule.value == 0.5
    with pytest.raises(ValueError, match="schedule"):
        noisefast.GradientNoise([p]).load_state_dict(state)  # no stateful schedule to load it into


def test_bad_module_state_changes_nothing():
    schedule = S.adaptive(1.0, factor=0.5)
    layer = noisefast.GaussianNoise(0.1, schedule=schedule)
    layer.step(2)
    good = layer.state_dict()["_extra_state"]
    for bad_schedule in (dict(good["schedule"], value=-0.5), dict(good["schedule"], num_bad=-1),
                         {"value": 0.5}, dict(good["schedule"], extra=1)):
        with pytest.raises((ValueError, TypeError)):
            layer.load_state_dict({"_extra_state": {"num_steps": 7, "schedule": bad_schedule}})
        assert layer.num_steps == 2 and schedule.value == 1.0 and layer._factor.item() == 1.0
    plain = noisefast.GaussianNoise(0.1, schedule=S.linear(1.0, 0.0, 10))
    with pytest.raises(ValueError, match="keeps none"):
        plain.load_state_dict({"_extra_state": {"num_steps": 7, "schedule": good["schedule"]}})
    assert plain.num_steps == 0


def test_copies_refresh_their_own_modules():
    schedule = S.adaptive(1.0, factor=0.5)
    a, b = noisefast.GaussianNoise(0.1, schedule=schedule), noisefast.GaussianNoise(0.2, schedule=schedule)
    net = torch.nn.Sequential(a, b)
    twin = copy.deepcopy(net)
    assert twin[0].schedule is twin[1].schedule and twin[0].schedule is not schedule
    twin[0].schedule.reduce()
    assert twin[0]._factor.item() == twin[1]._factor.item() == 0.5
    assert a._factor.item() == b._factor.item() == 1.0
    schedule.reduce()
    schedule.reduce()
    assert a._factor.item() == 0.25 and twin[1]._factor.item() == 0.5


def test_schedule_does_not_keep_modules_alive():
    schedule = S.adaptive(1.0)
    layer = noisefast.GaussianNoise(0.1, schedule=schedule)
    ref = weakref.ref(layer)
    del layer
    gc.collect()
    assert ref() is None
    schedule.reduce()  # a dead listener is skipped


def test_compiled_forward_does_not_recompile_when_the_magnitude_changes():
    from torch._dynamo.testing import CompileCounter

    schedule = S.adaptive(1.0, factor=0.5, base=S.cosine(1.0, 0.25, 10))
    layer = noisefast.GaussianNoise(0.3, schedule=schedule)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), layer)
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    x = torch.randn(16, 4)
    torch.manual_seed(5)
    compiled(x)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for overuse in (True, False, True):
            schedule.step(overuse=overuse)
            layer.step()
            torch.manual_seed(5)
            out = compiled(x)
            torch.manual_seed(5)
            torch.testing.assert_close(out, net(x))
    assert counter.frame_count == 1
    assert layer._factor.item() == pytest.approx(0.25 * S.cosine(1.0, 0.25, 10)(3), rel=1e-15)


@pytest.mark.parametrize("kwargs,match", [
    ({"value": -1.0}, "value"), ({"factor": 1.0}, "factor"), ({"factor": -0.1}, "factor"),
    ({"min_value": -1.0}, "min_value"), ({"patience": -1}, "patience"), ({"mode": "up"}, "mode"),
    ({"threshold": -1e-3}, "threshold"), ({"threshold_mode": "x"}, "threshold_mode"), ({"cooldown": 1.5}, "cooldown"),
    ({"base": 0.5}, "base")])
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        S.adaptive(**kwargs)


def test_step_takes_exactly_one_signal():
    schedule = S.adaptive()
    with pytest.raises(TypeError, match="exactly one"):
        schedule.step()
    with pytest.raises(TypeError, match="exactly one"):
        schedule.step(0.5, overuse=True)
    with pytest.raises(TypeError, match="overuse"):
        schedule.step(overuse=1)
    with pytest.raises(ValueError, match="metric"):
        schedule.step(float("nan"))
    schedule.step(torch.tensor(0.5))
    assert schedule.best == 0.5


def test_gradient_noise_with_a_step_schedule():
    p = torch.nn.Parameter(torch.zeros(2))
    noise = noisefast.GradientNoise([p], eta=0.25, gamma=0.0, schedule=S.linear(1.0, 0.0, 4))
    assert [noise.std(t) for t in range(5)] == pytest.approx([0.5, 0.375, 0.25, 0.125, 0.0], rel=1e-15)
    assert "schedule" not in noise.state_dict()  # a stateless schedule has nothing to save
    with pytest.raises(TypeError, match="schedule"):
        noisefast.GradientNoise([p], schedule=0.5)
    assert "schedule=linear" in repr(noise)
