"""Every stateful class resumes bit for bit: save -> torch.load(weights_only=True) -> load ->
continue equals the uninterrupted run, on the CPU, with and without explicit generators; and a
corrupted state of each kind is rejected and changes nothing (issue #13: "make it hard to
reintroduce").

Without an explicit generator, noise comes from torch's default generator, whose state the
training script saves itself (``torch.get_rng_state()``), as the harness below does. With one, the
class's own state_dict carries it (before #13, GradientNoise, GaussianNoise and WeightNoise left it
out, and a run resumed with ``generator=`` drew other noise).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Any, Callable, List

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

import noisefast
from noisefast import schedules

STEPS_BEFORE, STEPS_AFTER = 3, 4


def _round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))


def _move_weights(net: nn.Module, step: int) -> None:
    """A deterministic 'optimizer step' and a forward pass that moves the BatchNorm buffers."""
    with torch.no_grad():
        for k, p in enumerate(net.parameters()):
            p.add_(torch.sin(torch.arange(p.numel(), dtype=p.dtype).view(p.shape) * (k + 1) + step))
    net.train()
    net(torch.cos(torch.arange(20.0) + step).view(4, 5))


@dataclass
class Case:
    """build(generator, seed) -> object; step(obj, i) -> outputs of step i; state/load."""
    build: Callable[[Any, int], Any]
    step: Callable[[Any, int], List[torch.Tensor]]
    state: Callable[[Any], Any]
    load: Callable[[Any, Any], None]


class GradientNoiseRun:
    def __init__(self, generator, seed):
        self.params = [nn.Parameter(torch.zeros(7)), nn.Parameter(torch.zeros(2, 3, dtype=torch.float64))]
        self.noise = noisefast.GradientNoise(self.params, eta=0.5, generator=generator)

    def step(self, i):
        for p in self.params:
            p.grad = torch.full_like(p, float(i))
        self.noise.step()
        return [p.grad.clone() for p in self.params]


class ModuleRun:
    def __init__(self, module):
        self.module = module

    def step(self, i):
        out = self.module(torch.linspace(-1, 1, 40).view(8, 5) + i)
        self.module.step()
        return [out.detach().clone()]


def _gaussian_noise(generator, seed):
    return ModuleRun(noisefast.GaussianNoise(0.3, schedule=schedules.linear(1.0, 0.2, 10), generator=generator))


def _weight_noise(generator, seed):
    torch.manual_seed(99)  # the same clean weights in every run
    return ModuleRun(noisefast.WeightNoise(nn.Linear(5, 4), 0.1, schedule=schedules.cosine(1.0, 0.0, 10),
                                           generator=generator))


class AdaptiveModuleRun(ModuleRun):
    """A noise module whose adaptive schedule is reduced on every other step (the state to resume)."""

    def step(self, i):
        out = super().step(i)
        self.module.schedule.step(overuse=i % 2 == 1)
        return out


def _adaptive_gaussian_noise(generator, seed):
    schedule = schedules.adaptive(1.0, factor=0.5, min_value=0.05, cooldown=1, base=schedules.linear(1.0, 0.2, 10))
    return AdaptiveModuleRun(noisefast.GaussianNoise(0.3, schedule=schedule, generator=generator))


class AdaptiveGradientNoiseRun(GradientNoiseRun):
    def __init__(self, generator, seed):
        super().__init__(generator, seed)
        self.noise.schedule = schedules.adaptive(1.0, factor=0.5, patience=0)

    def step(self, i):
        out = super().step(i)
        self.noise.schedule.step(float(i % 3))  # a metric that improves, then plateaus
        return out


class TrackerRun:
    """A RobustnessTracker (its own generator, seeded by ``seed``) evaluating a model that changes."""

    def __init__(self, generator, seed):
        torch.manual_seed(5)
        self.model = nn.Linear(5, 3)
        self.weight = self.model.weight.detach().clone()
        x = torch.linspace(-2, 2, 60).view(12, 5)
        self.tracker = noisefast.RobustnessTracker((x, torch.arange(12) % 3), [0.0, 0.5, 2.0], metric="loss",
                                                   seed=seed + 1, patience=1)

    def step(self, i):
        with torch.no_grad():  # the model at step i (its own state is not the tracker's)
            self.model.weight.copy_(self.weight + 0.1 * math.cos(i))
        record = self.tracker.evaluate(self.model, i)
        return [torch.tensor(record.curve.values), torch.tensor(float(record.overuse))]


class EMARun:
    def __init__(self, generator, seed, posthoc=False):
        self.net = _net(7)
        self.posthoc = posthoc
        self.ema = (noisefast.PostHocEMA(self.net, snapshot_every=2) if posthoc
                    else noisefast.EMA(self.net, sigma_rels=(0.05, 0.10)))

    def step(self, i):
        _move_weights(self.net, i)
        self.ema.update()
        if self.posthoc:
            return list(self.ema.reconstruct(0.07).values()) if self.ema.snapshot_times else []
        return [t.clone() for p in range(2) for t in self.ema.averaged(p).values()]

    def state(self):
        return {"net": self.net.state_dict(), "ema": self.ema.state_dict()}

    def load(self, state):
        self.net.load_state_dict(state["net"])
        self.ema.load_state_dict(state["ema"])


CASES = {
    "GradientNoise": Case(GradientNoiseRun, GradientNoiseRun.step, lambda r: r.noise.state_dict(),
                          lambda r, s: r.noise.load_state_dict(s)),
    "GaussianNoise": Case(_gaussian_noise, ModuleRun.step, lambda r: r.module.state_dict(),
                          lambda r, s: r.module.load_state_dict(s)),
    "WeightNoise": Case(_weight_noise, ModuleRun.step, lambda r: r.module.state_dict(),
                        lambda r, s: r.module.load_state_dict(s)),
    "GaussianNoise-adaptive": Case(_adaptive_gaussian_noise, AdaptiveModuleRun.step, lambda r: r.module.state_dict(),
                                   lambda r, s: r.module.load_state_dict(s)),
    "GradientNoise-adaptive": Case(AdaptiveGradientNoiseRun, AdaptiveGradientNoiseRun.step,
                                   lambda r: r.noise.state_dict(), lambda r, s: r.noise.load_state_dict(s)),
    "RobustnessTracker": Case(TrackerRun, TrackerRun.step, lambda r: r.tracker.state_dict(),
                              lambda r, s: r.tracker.load_state_dict(s)),
    "EMA": Case(EMARun, EMARun.step, EMARun.state, EMARun.load),
    "PostHocEMA": Case(lambda g, s: EMARun(g, s, posthoc=True), EMARun.step, EMARun.state, EMARun.load),
}


def _generator(with_generator: bool, seed: int):
    return torch.Generator().manual_seed(seed) if with_generator else None


@pytest.mark.parametrize("with_generator", [False, True], ids=["default-generator", "explicit-generator"])
@pytest.mark.parametrize("name", list(CASES))
def test_resumed_run_equals_uninterrupted_bit_for_bit(name, with_generator):
    case = CASES[name]
    torch.manual_seed(1)
    run = case.build(_generator(with_generator, 11), 0)
    for i in range(STEPS_BEFORE):
        case.step(run, i)
    saved = _round_trip(case.state(run))
    saved_rng = torch.get_rng_state()
    expected = [case.step(run, i) for i in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)]

    torch.manual_seed(2)  # another default stream and another generator seed: the state must restore them
    resumed = case.build(_generator(with_generator, 12), 1)
    case.load(resumed, saved)
    torch.set_rng_state(saved_rng)
    got = [case.step(resumed, i) for i in range(STEPS_BEFORE, STEPS_BEFORE + STEPS_AFTER)]
    for i, (a, b) in enumerate(zip(expected, got)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert torch.equal(x, y), f"{name}: step {STEPS_BEFORE + i} differs after resuming"


def _leaves(state):
    return [t.clone() if isinstance(t, torch.Tensor) else t for t in tree_leaves(state)]


def _same(a, b):
    return len(a) == len(b) and all(
        torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y for x, y in zip(a, b))


def _corruptions(name):
    """(kind, function state -> corrupted state) for the state of case ``name``."""
    schedule_kinds = {
        "schedule-value": lambda e: {**e, "schedule": {**e["schedule"], "value": -1.0}},
        "schedule-count": lambda e: {**e, "schedule": {**e["schedule"], "num_bad": 1.5}},
        "schedule-key": lambda e: {**e, "schedule": {k: v for k, v in e["schedule"].items() if k != "best"}},
    }
    if name == "GradientNoise-adaptive":
        return {**_corruptions("GradientNoise"), **schedule_kinds}
    if name == "GaussianNoise-adaptive":
        kinds = _corruptions("GaussianNoise")
        kinds.update({kind: (lambda fn: lambda s: {**s, "_extra_state": fn(dict(s["_extra_state"]))})(fn)
                      for kind, fn in schedule_kinds.items()})
        return kinds
    if name == "RobustnessTracker":
        return {
            "missing-key": lambda s: {k: v for k, v in s.items() if k != "counts"},
            "steps-decrease": lambda s: {**s, "steps": s["steps"][::-1]},
            "values-length": lambda s: {**s, "values": s["values"][:-1]},
            "values-row": lambda s: {**s, "values": [v[:2] for v in s["values"]]},
            "stds": lambda s: {**s, "stds": [0.0, 0.5, 1.0]},
            "metric": lambda s: {**s, "metric": "accuracy"},
            "generator-size": lambda s: {**s, "generator": s["generator"][:-1]},
            "generator-type": lambda s: {**s, "generator": [1, 2]},
        }
    if name == "GradientNoise":
        return {
            "missing-key": lambda s: {k: v for k, v in s.items() if k != "eta"},
            "unexpected-key": lambda s: {**s, "extra": 1},
            "bad-t": lambda s: {**s, "t": -1},
            "bad-eta": lambda s: {**s, "eta": float("nan")},
            "generator-dtype": lambda s: {**s, "generator": s["generator"].float()},
            "generator-size": lambda s: {**s, "generator": s["generator"][:-1]},
            "generator-type": lambda s: {**s, "generator": [1, 2]},
        }
    if name in ("GaussianNoise", "WeightNoise"):
        def extra(fn):
            return lambda s: {**s, "_extra_state": fn(dict(s["_extra_state"]))}
        kinds = {
            "missing-steps": extra(lambda e: {k: v for k, v in e.items() if k != "num_steps"}),
            "bad-steps": extra(lambda e: {**e, "num_steps": -2}),
            "unexpected-key": extra(lambda e: {**e, "extra": 1}),
            "generator-dtype": extra(lambda e: {**e, "generator": e["generator"].float()}),
            "generator-size": extra(lambda e: {**e, "generator": e["generator"][:10]}),
        }
        if name == "WeightNoise":  # the wrapped model's tensors: torch would raise after setting the step
            kinds["module-weight-shape"] = lambda s: {**s, "module.weight": torch.zeros(2, 2)}
            kinds["module-weight-missing"] = lambda s: {k: v for k, v in s.items() if k != "module.bias"}
            kinds["unexpected-tensor"] = lambda s: {**s, "module.extra": torch.zeros(1)}
        return kinds
    ema = (lambda fn: lambda s: {**s, "ema": fn(s["ema"])}) if name == "EMA" else \
        (lambda fn: lambda s: {**s, "ema": {**s["ema"], "ema": fn(s["ema"]["ema"])}})
    first = "0.weight"
    kinds = {
        "missing-field": ema(lambda e: {k: v for k, v in e.items() if k != "num_updates"}),
        "bad-version": ema(lambda e: {**e, "version": 7}),
        "wrong-shape": ema(lambda e: {**e, "averaged": [{**e["averaged"][0], first: torch.zeros(2)}] + e["averaged"][1:]}),
        "meta-tensor": ema(lambda e: {**e, "averaged": e["averaged"][:1] + [
            {**e["averaged"][1], "2.bias": torch.empty(3, device="meta")}]}),
        "int-shadow": ema(lambda e: {**e, "averaged": e["averaged"][:1] + [
            {**e["averaged"][1], "2.bias": torch.zeros(3, dtype=torch.int64)}]}),
        "buffer-dtype": ema(lambda e: {**e, "copied": {**e["copied"], "1.num_batches_tracked": torch.zeros(())}}),
        "profiles": ema(lambda e: {**e, "sigma_rels": [0.05, 0.2]}),
    }
    if name == "PostHocEMA":
        kinds["duplicate-snapshot"] = lambda s: {**s, "ema": {**s["ema"], "snapshots": s["ema"]["snapshots"]
                                                              + s["ema"]["snapshots"][-1:]}}
        kinds["snapshot-shape"] = lambda s: {**s, "ema": {**s["ema"], "snapshots": [
            {"t": 2, "data": {**s["ema"]["snapshots"][0]["data"], "averaged": [{first: torch.zeros(1)}] * 2}}]}}
    return kinds


CORRUPTIONS = [(name, kind) for name in CASES for kind in _corruptions(name)]


@pytest.mark.parametrize("name, kind", CORRUPTIONS, ids=[f"{n}-{k}" for n, k in CORRUPTIONS])
def test_corrupted_state_is_rejected_and_changes_nothing(name, kind):
    case = CASES[name]
    source = case.build(_generator(True, 3), 0)
    for i in range(STEPS_BEFORE):
        case.step(source, i)
    bad = _corruptions(name)[kind](_round_trip(case.state(source)))
    target = case.build(_generator(True, 4), 1)
    case.step(target, 0)
    # (EMA cases: the harness loads the network first; the EMA's state is what must not change.)
    checked = (lambda r: case.state(r)["ema"]) if name in ("EMA", "PostHocEMA") else case.state
    before = _leaves(checked(target))
    with pytest.raises((ValueError, TypeError)):
        case.load(target, bad)
    assert _same(before, _leaves(checked(target))), f"{name}: a failed load changed the state ({kind})"


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=15)
@given(name=st.sampled_from(list(CASES)), before=st.integers(0, 5), after=st.integers(1, 4),
       with_generator=st.booleans(), seed=st.integers(0, 2 ** 31))
def test_resuming_at_any_step_equals_uninterrupted(name, before, after, with_generator, seed):
    """The same, saved at any step (0 included: a state saved before the first update or draw)."""
    case = CASES[name]
    torch.manual_seed(seed)
    run = case.build(_generator(with_generator, seed), 0)
    for i in range(before):
        case.step(run, i)
    saved = _round_trip(case.state(run))
    saved_rng = torch.get_rng_state()
    expected = [case.step(run, i) for i in range(before, before + after)]

    torch.manual_seed(seed + 1)
    resumed = case.build(_generator(with_generator, seed + 1), 1)
    case.load(resumed, saved)
    torch.set_rng_state(saved_rng)
    got = [case.step(resumed, i) for i in range(before, before + after)]
    for a, b in zip(expected, got):
        assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b)), f"{name}: differs after resuming"
