"""The robustness example (examples/robustness.py) runs end to end in --quick mode and writes its
figure and table; its recipe list takes a new regulariser as one entry."""
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
    png = tmp_path / "robustness.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (tmp_path / "robustness.md").read_text()
    for recipe in example.REGULARISERS:
        assert f"| {recipe.name} |" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and "regulariser" not in line]
    assert len(rows) == len(example.REGULARISERS)
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
