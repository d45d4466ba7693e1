"""The robustness example (examples/robustness.py) runs end to end in --quick mode and writes its
figures and tables; its recipe list takes a new regulariser as one entry; the injection comparison
reduces an adaptive magnitude when its tracker signals overuse."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn")  # the example's data; absent on the GPU machine
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import robustness as example  # noqa: E402


def test_quick_run_writes_figure_and_table(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        assert example.main(["--quick", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(threads)
    for name in ("robustness.png", "robustness_tracking.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "robustness.md").read_text()
    table, injection = text.split("## Noise on every batch")
    for recipe in example.REGULARISERS:
        assert f"| {recipe.name} |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "regulariser" not in line]
    assert len(rows) == len(example.REGULARISERS)
    names = [r.name for r in example.injections(1.5, 2, factor=0.5, min_value=0.25)]
    injection_rows = [line for line in injection.splitlines() if line.startswith("| ") and "injection" not in line]
    assert [r.split("|")[1].strip() for r in injection_rows] == names
    assert all(float(r.split("|")[2]) > 70 for r in injection_rows), injection
    clean = [float(r.split("|")[2]) for r in rows]
    noisy = [float(r.split("|")[-2]) for r in rows]
    assert all(c > 70 for c in clean), table  # even 3 epochs learn the digits (chance: 10%)
    assert all(n < c for n, c in zip(noisy, clean)), table  # std 1 noise hurts every recipe


def test_one_entry_adds_a_regulariser():
    calls = []
    recipe = example.Regulariser("probe", after_backward=lambda model, total: calls.append)
    data = example.digits.load_digits_split()
    model = example.train(recipe, data, seed=0, epochs=1, batch_size=256, lr=1e-3)
    assert calls == list(range(data.train_images.shape[0] // 256))
    curve = example.evaluate(model, data, (0.0, 1.0), seed=0, repeats=1)
    assert curve.count == data.test_images.shape[0] and len(curve.values) == 2


def test_adaptive_magnitude_follows_the_tracker():
    """A frozen model always below its reference: the second evaluation (noisy metrics stalled)
    signals overuse and the adaptive schedule halves the noise layer's factor."""
    schedule = example.noisefast.schedules.adaptive(1.0, factor=0.5)
    torch.manual_seed(0)
    model = torch.nn.Sequential(example.noisefast.GaussianNoise(0.5, schedule=schedule), example.classifier())
    data = example.digits.load_digits_split()
    tracker = example.RobustnessTracker([(data.test_images, data.test_labels)], (0.0, 1.0), reference=2.0,
                                        patience=1, same_noise=True)
    on_epoch_end = example.follow(tracker)
    on_epoch_end(model, 1)
    assert not tracker.overuse and model[0]._factor.item() == 1.0
    on_epoch_end(model, 2)
    assert tracker.overuse and model[0]._factor.item() == 0.5 and schedule.num_reductions == 1
