"""RobustnessTracker: its history equals direct robustness_curve calls, the overuse rule on
constructed histories, state round trips (torch.load(weights_only=True)), resumption, modes,
progress bars, plots and argument errors."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

import noisefast
from noisefast import plot
from noisefast.robustness import robustness_curve
from noisefast.robustness_tracker import RobustnessTracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STDS = (0.0, 0.5, 1.0)


def problem(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) * 0.6 + (2 * y - 1).float()[:, None]
    return [(x[: n // 2], y[: n // 2]), (x[n // 2:], y[n // 2:])]


def train_step(model, data, optimizer):
    for x, y in data:
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def roundtrip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_history_equals_direct_robustness_curve_calls():
    data = problem()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    tracker = RobustnessTracker(data, STDS, every=3, seed=11)
    generator = torch.Generator().manual_seed(11)
    direct = {}
    for step in range(10):
        if step % 3 == 0:
            direct[step] = robustness_curve(model, data, STDS, generator=generator)
        record = tracker.step(model, step)
        assert (record is None) == (step % 3 != 0)
        train_step(model, data, optimizer)
    assert tracker.steps == [0, 3, 6, 9]
    assert [r.curve for r in tracker.history] == [direct[s] for s in tracker.steps]
    assert len({r.curve.values for r in tracker.history}) == 4  # the model and the noise changed
    record = tracker.latest
    assert record.clean == record.curve.values[0]
    assert record.noisy == pytest.approx((record.curve.values[1] + record.curve.values[2]) / 2, rel=1e-15)
    assert record.area == pytest.approx(sum(record.curve.values) / 3, rel=1e-15)
    assert tracker.series(0.5) == [r.curve.values[1] for r in tracker.history]


def test_same_noise_restarts_the_generator():
    data, model = problem(), nn.Linear(4, 2)
    fresh = RobustnessTracker(data, STDS, seed=2)
    same = RobustnessTracker(data, STDS, seed=2, same_noise=True)
    for step in (0, 1):
        fresh.evaluate(model, step)
        same.evaluate(model, step)
    assert same.history[0].curve == same.history[1].curve == fresh.history[0].curve
    assert fresh.history[1].curve != fresh.history[0].curve


def constructed_state(tracker, clean, noisy):
    """A state whose history has these clean and noisy metrics (stds 0 and 0.5)."""
    return {"version": 1, "stds": [0.0, 0.5], "metric": tracker.metric_name, "steps": list(range(len(clean))),
            "values": [[c, n] for c, n in zip(clean, noisy)], "counts": [100] * len(clean),
            "generator": torch.Generator().manual_seed(0).get_state(), "last_seconds": 0.0}


def overuse_flags(clean, noisy, **kwargs):
    tracker = RobustnessTracker(problem(), (0.0, 0.5), **kwargs)
    tracker.load_state_dict(constructed_state(tracker, clean, noisy))
    return [r.overuse for r in tracker.history], tracker


def test_overuse_fires_on_a_degrading_history():
    # eval 3: clean 0.93 < best 0.95 - 0.01 while noisy 0.59 <= best 0.60: bad 1; eval 4: bad 2 = patience
    flags, tracker = overuse_flags([0.90, 0.95, 0.93, 0.92, 0.91, 0.96], [0.50, 0.60, 0.59, 0.58, 0.57, 0.70],
                                   tolerance=0.01, patience=2)
    assert flags == [False, False, False, True, False, False]
    assert [r.bad_count for r in tracker.history] == [0, 0, 1, 0, 1, 0]
    assert [r.degraded for r in tracker.history] == [False, False, True, True, True, False]
    assert not tracker.overuse
    # a persisting condition fires again after `patience` more evaluations
    flags, _ = overuse_flags([0.95, 0.90, 0.90, 0.90, 0.90], [0.6, 0.5, 0.5, 0.5, 0.5], patience=2)
    assert flags == [False, False, True, False, True]


@pytest.mark.parametrize("clean,noisy", [
    ([0.90, 0.95, 0.945, 0.96, 0.955], [0.50, 0.60, 0.55, 0.65, 0.60]),   # within tolerance
    ([0.95, 0.90, 0.89, 0.88, 0.87], [0.50, 0.60, 0.70, 0.80, 0.90]),     # noisy metrics still improve
    ([0.95, 0.90, 0.95, 0.90, 0.95], [0.60, 0.50, 0.50, 0.50, 0.50]),     # never `patience` in a row
])
def test_overuse_does_not_fire_on_a_healthy_history(clean, noisy):
    flags, _ = overuse_flags(clean, noisy, tolerance=0.01, patience=2)
    assert not any(flags)


def test_overuse_against_a_reference_run_and_for_a_loss():
    clean, noisy = [0.95, 0.955, 0.96], [0.6, 0.6, 0.6]
    assert overuse_flags(clean, noisy, patience=2)[0] == [False, False, False]
    reference = RobustnessCurve_at(0.98)
    # below the reference by more than 0.01 throughout; stalled from the second evaluation on
    assert overuse_flags(clean, noisy, patience=2, reference=reference)[0] == [False, False, True]
    assert overuse_flags(clean, noisy, patience=2, reference=0.98)[0] == [False, False, True]
    # mode "min" (the loss): rising clean loss while the noisy loss stops falling
    flags, tracker = overuse_flags([0.30, 0.20, 0.25, 0.26], [1.0, 0.9, 0.95, 0.95], metric="loss", patience=2)
    assert tracker.mode == "min" and flags == [False, False, False, True]


def RobustnessCurve_at(clean):
    return noisefast.RobustnessCurve((0.0, 1.0), (clean, 0.5), 10)


def test_live_overuse_with_a_degrading_model():
    """A model whose accuracy (the same at every std) falls: the rule fires after patience evaluations."""
    x, y = torch.zeros(100, 3), torch.zeros(100, dtype=torch.long)

    class Degrading:
        correct = 100

        def __call__(self, inputs):
            out = torch.zeros(inputs.shape[0], 2)
            out[self.correct:, 1] = 1.0
            return out

    model = Degrading()
    tracker = RobustnessTracker((x, y), (0.0, 1.0), tolerance=0.02, patience=2)
    fired = []
    for step, correct in enumerate([100, 100, 97, 96, 95]):
        model.correct = correct
        tracker.evaluate(model, step)
        fired.append(tracker.overuse)
    assert fired == [False, False, False, True, False]
    assert "OVERUSE" not in tracker.summary()


def test_state_round_trip_and_resume_continue_the_same_noise():
    data = problem()
    torch.manual_seed(1)
    model = nn.Linear(4, 2)
    whole = RobustnessTracker(data, STDS, seed=4, patience=1)
    first = RobustnessTracker(data, STDS, seed=4, patience=1)
    for step in range(2):
        whole.evaluate(model, step)
        first.evaluate(model, step)
    resumed = RobustnessTracker(data, STDS, seed=99, patience=1)  # the state's generator replaces the seed's
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert resumed.history == first.history
    for step in (2, 3):
        whole.evaluate(model, step)
        resumed.evaluate(model, step)
    assert resumed.history == whole.history
    assert resumed.summary() == whole.summary()


def test_bad_state_changes_nothing():
    data, model = problem(), nn.Linear(4, 2)
    tracker = RobustnessTracker(data, STDS)
    tracker.evaluate(model, 0)
    good = tracker.state_dict()
    before, generator = tracker.history, tracker.generator.get_state()
    bad_states = [
        dict(good, stds=[0.0, 0.5]),
        dict(good, metric="loss"),
        dict(good, steps=[0, 0], values=good["values"] * 2, counts=[1, 1]),
        dict(good, values=[[0.5, 0.5]]),
        dict(good, counts=[0]),
        dict(good, generator=torch.zeros(3, dtype=torch.uint8)),
        dict(good, version=2),
        {k: v for k, v in good.items() if k != "steps"},
        dict(good, steps=[0, 1]),
    ]
    for bad in bad_states:
        with pytest.raises((ValueError, TypeError)):
            tracker.load_state_dict(bad)
        assert tracker.history == before and torch.equal(tracker.generator.get_state(), generator)


def test_modes_restored_and_no_grad():
    seen = []

    class Probe(nn.Module):
        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return torch.zeros(x.shape[0], 2)

    model = nn.Sequential(nn.Linear(4, 4), Probe())
    model.train()
    model[0].eval()
    tracker = RobustnessTracker(problem(), STDS)
    tracker.evaluate(model, 0)
    assert set(seen) == {(False, False)}
    assert model.training and not model[0].training and model[1].training


def test_progress_bar(capsys):
    pytest.importorskip("tqdm")
    data, model = problem(), nn.Linear(4, 2)
    RobustnessTracker(data, STDS, progress=True).evaluate(model, 0)
    assert "robustness at step 0" in capsys.readouterr().err
    auto = RobustnessTracker(data, STDS, progress_after=0.0)
    auto.evaluate(model, 0)  # the first evaluation has no duration to judge by
    assert "robustness at step" not in capsys.readouterr().err
    auto.evaluate(model, 1)
    assert "robustness at step 1" in capsys.readouterr().err
    RobustnessTracker(data, STDS, progress=False, progress_after=0.0).evaluate(model, 0)
    assert capsys.readouterr().err == ""


def test_summary_is_one_line():
    tracker = RobustnessTracker(problem(), STDS, every=5)
    assert "no evaluation" in tracker.summary()
    tracker.evaluate(nn.Linear(4, 2), 10)
    line = tracker.summary()
    assert "\n" not in line and "step 10" in line and "area" in line and "0.5:" in line


def test_plot_history(tmp_path):
    pytest.importorskip("matplotlib")
    data, model = problem(), nn.Linear(4, 2)
    a = RobustnessTracker(data, STDS)
    b = RobustnessTracker(data, (0.0, 2.0))
    for step in range(3):
        a.evaluate(model, step)
        b.evaluate(model, step)
    fig = plot.robustness_history(a, path=tmp_path / "one.png")
    assert len(fig.axes[0].lines) == len(STDS) + 1  # one line per std and the area
    fig = plot.robustness_history({"a": a, "b": b}, path=tmp_path / "two.png", area=False)
    assert len(fig.axes[0].lines) == 4  # the smallest and largest std of each run
    assert (tmp_path / "one.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(TypeError, match="trackers"):
        plot.robustness_history({"a": 1})
    with pytest.raises(ValueError, match="std"):
        plot.robustness_history(a, stds=[0.25])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"stds": []}, ValueError, "stds"),
    ({"stds": [0.0, -0.5]}, ValueError, "stds"),
    ({"stds": [0.5, 1.0]}, ValueError, "stds must include 0"),
    ({"stds": [0.0]}, ValueError, "std > 0"),
    ({"every": 0}, ValueError, "every"),
    ({"every": -2}, ValueError, "every"),
    ({"every": 1.5}, TypeError, "every"),
    ({"patience": 0}, ValueError, "patience"),
    ({"tolerance": -0.1}, ValueError, "tolerance"),
    ({"min_delta": -0.1}, ValueError, "min_delta"),
    ({"mode": "up"}, ValueError, "mode"),
    ({"metric": "f1"}, ValueError, "metric"),
    ({"reference": "high"}, TypeError, "reference"),
    ({"seed": -1}, ValueError, "seed"),
    ({"progress": 1}, TypeError, "progress"),
])
def test_bad_arguments_name_themselves(kwargs, error, match):
    args = {"data": problem(), "stds": STDS, **kwargs}
    with pytest.raises(error, match=match):
        RobustnessTracker(**args)


def test_bad_data_metric_and_steps():
    data = problem()
    with pytest.raises(TypeError, match="re-iterable"):
        RobustnessTracker(iter(data), STDS)
    # [B, 2]: the wrong shape, found after the noise of std 0.5 was drawn
    tracker = RobustnessTracker(data, (0.5, 0.0, 1.0), metric=lambda out, y: out)
    generator = tracker.generator.get_state()
    with pytest.raises(ValueError, match="metric must return one value per sample"):
        tracker.evaluate(nn.Linear(4, 2), 0)
    assert tracker.history == () and torch.equal(tracker.generator.get_state(), generator)
    tracker = RobustnessTracker(data, STDS)
    tracker.evaluate(nn.Linear(4, 2), 4)
    with pytest.raises(ValueError, match="step must increase"):
        tracker.evaluate(nn.Linear(4, 2), 4)
    with pytest.raises(ValueError, match="step"):
        tracker.step(nn.Linear(4, 2), -1)


def test_a_failed_evaluation_leaves_the_generator_as_it_was():
    # same_noise reseeds the generator before evaluating; a failure must restore the state from
    # before that reseed (before: it stayed reseeded).
    tracker = RobustnessTracker(problem(), STDS, seed=11, same_noise=True)
    tracker.generator.manual_seed(1234)
    torch.randn(3, generator=tracker.generator)
    before = tracker.generator.get_state()

    def broken(x):
        raise RuntimeError("model failed")

    with pytest.raises(RuntimeError, match="model failed"):
        tracker.evaluate(broken, 0)
    assert torch.equal(tracker.generator.get_state(), before) and len(tracker.history) == 0
