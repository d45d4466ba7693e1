"""Tests of noisefast.plot: the figures hold the schedules' numbers and are written as PNG files."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# matplotlib is optional (the GPU machine has none): skip the figures' tests there.
pytest.importorskip("matplotlib")

from noisefast import plot  # noqa: E402
from noisefast import schedules as S  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_level_distributions_figure(tmp_path):
    path = tmp_path / "levels.png"
    fig = plot.level_distributions(41, batch_size=64, path=path)
    assert_png(path)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == list(plot.default_level_distributions(64))
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert "sigma" in ax.get_xlabel() and ax.get_ylabel() and ax.get_title()
    sigmas = S.karras_sigmas(41)
    lines = {line.get_label(): line for line in ax.get_lines()}
    lognormal = lines[labels[0]]
    np.testing.assert_allclose(lognormal.get_xdata(), sigmas[:-1].numpy())
    np.testing.assert_allclose(lognormal.get_ydata(), S.lognormal_level_probs(sigmas).numpy())
    stratified = lines[labels[2]]
    np.testing.assert_allclose(stratified.get_ydata(), S.PolynomialLevels(4.0).probs(sigmas, batch_size=64).numpy())


def test_level_distributions_custom_samplers_and_sigmas():
    sigmas = torch.tensor([0.01, 0.1, 1.0, 10.0])
    fig = plot.level_distributions(sigmas=sigmas, samplers={"u": S.UniformLevels()}, log_prob=False)
    (line,) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_ydata(), [1 / 3] * 3)
    assert fig.axes[0].get_yscale() == "linear"


def test_curriculum_figure(tmp_path):
    path = tmp_path / "curricula.png"
    fig = plot.curriculum(400_000, num_points=500, path=path)
    assert_png(path)
    ax = fig.axes[0]
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(plot.default_curricula(400_000))
    steps = lines[0].get_xdata()
    assert steps[0] == 0 and steps[-1] == 400_000
    assert list(lines[0].get_ydata()) == [S.ict_num_levels(int(k), 400_000) for k in steps]
    assert max(lines[1].get_ydata()) == 250 and lines[2].get_ydata()[-1] == 151
    assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title()


def test_curriculum_by_names_into_axes():
    from matplotlib.figure import Figure
    fig = Figure()
    ax = fig.add_subplot()
    out = plot.curriculum(50, ["ict", "ct"], ax=ax, log_levels=False)
    assert out is fig
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == ["ict", "ct"]
    assert list(lines[1].get_xdata()) == list(range(51))  # fewer steps than points: every step
    assert list(lines[1].get_ydata()) == [S.ct_num_levels(k, 50) for k in range(51)]
    with pytest.raises(ValueError, match="total_steps"):
        plot.curriculum(0)


def test_overview(tmp_path):
    path = tmp_path / "overview.png"
    fig = plot.overview(path, n=21, total_steps=1000)
    assert_png(path)
    assert len(fig.axes) == 2 and all(ax.get_legend() is not None for ax in fig.axes)


def test_missing_matplotlib_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"pip install noisefast\[plot\]"):
        plot.level_distributions(11)


def test_example_script_writes_pngs(tmp_path, monkeypatch):
    script = Path(__file__).resolve().parent.parent / "examples" / "plot_schedules.py"
    monkeypatch.setattr(sys, "argv", [str(script), "--out", str(tmp_path), "--total-steps", "2000"])
    runpy.run_path(str(script), run_name="__main__")
    assert_png(tmp_path / "level_distributions.png")
    assert_png(tmp_path / "curricula.png")
