"""Figures of noisefast's schedules and robustness curves (matplotlib, optional: ``pip install noisefast[plot]``).

Every function returns a ``matplotlib.figure.Figure`` (made without pyplot, so nothing global
changes and no display is needed) and also writes it as a PNG when given ``path``. Functions that
take ``ax`` draw into an existing Axes instead and return its Figure.
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence, Union

import numpy as np

from . import schedules as S
from ._checks import check_int
from .robustness import RobustnessCurve
from .robustness_tracker import RobustnessTracker

_INSTALL_HINT = "noisefast.plot needs matplotlib: pip install noisefast[plot]"


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return Figure


def _new_axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig = _figure_class()(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot()


def _save(fig, path: Optional[Union[str, os.PathLike]], dpi: int):
    if path is not None:
        fig.savefig(os.fspath(path), dpi=dpi, format="png")
    return fig


def default_level_distributions(batch_size: int = 256) -> dict:
    """The distributions :func:`level_distributions` draws by default: label -> sampler."""
    return {
        "log-normal (iCT, P_mean=-1.1, P_std=2.0)": S.LogNormalLevels(),
        "polynomial, curve 4, i.i.d.": S.PolynomialLevels(4.0, stratified=False),
        f"polynomial, curve 4, stratified (batch {batch_size})": S.PolynomialLevels(4.0, stratified=True),
        "uniform (original CT)": S.UniformLevels(),
    }


def level_distributions(n: int = 161, *, samplers: Optional[Mapping[str, S.LevelDistribution]] = None,
                        batch_size: int = 256, sigmas=None, sigma_min: float = 0.002, sigma_max: float = 80.0,
                        rho: float = 7.0, log_prob: bool = True, ax=None, path=None, dpi: int = 150,
                        title: Optional[str] = None):
    """Probability of each level pair under several level distributions, on a log-sigma axis.

    Each curve shows p(i), the probability that a training sample uses the pair
    (sigma_i, sigma_{i+1}), plotted at sigma_i. Stratified samplers are shown by their marginal over
    a batch of ``batch_size``.

    Args:
        n: number of Karras levels (ignored when ``sigmas`` is given).
        samplers: label -> level distribution (default :func:`default_level_distributions`).
        batch_size: batch size for the marginal of stratified samplers.
        sigmas: an explicit ascending level vector instead of Karras levels.
        sigma_min, sigma_max, rho: the Karras levels.
        log_prob: logarithmic probability axis (the distributions span several decades).
        ax: draw into this Axes instead of a new figure.
        path: write a PNG there.

    Returns:
        The Figure.
    """
    fig, ax = _new_axes(ax, (7.5, 4.5))
    if sigmas is None:
        sigmas = S.karras_sigmas(n, sigma_min, sigma_max, rho, device="cpu")
    sigmas = sigmas.detach().double().cpu()
    samplers = default_level_distributions(batch_size) if samplers is None else samplers
    x = sigmas[:-1].numpy()
    for label, sampler in samplers.items():
        probs = sampler.probs(sigmas, batch_size=None if sampler.iid else batch_size).numpy()
        ax.plot(x, probs, marker="o", markersize=2.5, linewidth=1.4, label=label)
    ax.set_xscale("log")
    if log_prob:
        ax.set_yscale("log")
    ax.set_xlabel(r"noise level $\sigma_i$ (smaller level of the pair $\sigma_i < \sigma_{i+1}$)")
    ax.set_ylabel(r"probability of the pair $p(i)$")
    if title is None:
        title = f"Noise-level distributions over the {len(x)} pairs of N = {len(x) + 1} levels"
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path, dpi)


def default_curricula(total_steps: int) -> dict:
    """The curricula :func:`curriculum` draws by default: label -> curriculum."""
    return {
        "iCT exponential (s0=10, s1=1280)": S.ICTCurriculum(total_steps),
        "sinusoidal (s0=20, s1=250)": S.SinusoidalCurriculum(total_steps),
        "original CT (s0=2, s1=150)": S.CTCurriculum(total_steps),
    }


def curriculum(total_steps: int = 400_000, curricula: Optional[Union[Mapping[str, object], Sequence[str]]] = None,
               *, num_points: int = 4000, log_levels: bool = True, ax=None, path=None, dpi: int = 150,
               title: Optional[str] = None):
    """The number of levels N(k) over training for one or more curricula.

    Args:
        total_steps: K, the training length.
        curricula: label -> curriculum object, or a list of names accepted by
            :func:`noisefast.schedules.make_curriculum` (default :func:`default_curricula`).
        num_points: steps evaluated (evenly spaced, plus the last step), drawn as a step function.
        log_levels: logarithmic N axis (base 2), which shows iCT's doublings as even steps.
        ax: draw into this Axes instead of a new figure.
        path: write a PNG there.

    Returns:
        The Figure.
    """
    total_steps = check_int(total_steps, "total_steps", 1)
    num_points = check_int(num_points, "num_points", 2)
    if curricula is None:
        curricula = default_curricula(total_steps)
    elif not isinstance(curricula, Mapping):
        curricula = {name: S.make_curriculum(name, total_steps) for name in curricula}
    fig, ax = _new_axes(ax, (7.5, 4.5))
    count = min(num_points, total_steps + 1)
    steps = sorted({round(j * total_steps / (count - 1)) for j in range(count)})
    for label, cur in curricula.items():
        ax.plot(steps, [cur.num_levels(k) for k in steps], drawstyle="steps-post", linewidth=1.8, label=label)
    if log_levels:
        from matplotlib.ticker import ScalarFormatter
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlim(0, total_steps)
    if total_steps >= 10_000:
        from matplotlib.ticker import FuncFormatter
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v / 1000:g}k" if v else "0"))
    ax.set_xlabel(f"training step k (of K = {total_steps:,})")
    ax.set_ylabel("number of noise levels N(k)")
    ax.set_title(title if title is not None else "Discretisation curricula: noise levels N over training")
    ax.grid(True, which="major", alpha=0.35)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path, dpi)


def overview(path=None, *, n: int = 161, total_steps: int = 400_000, batch_size: int = 256, dpi: int = 150):
    """:func:`level_distributions` and :func:`curriculum` side by side in one Figure."""
    fig = _figure_class()(figsize=(14, 4.8), layout="constrained")
    left, right = fig.subplots(1, 2)
    level_distributions(n, batch_size=batch_size, ax=left)
    curriculum(total_steps, ax=right)
    return _save(fig, path, dpi)


def _curve_group(label, value):
    """A list of RobustnessCurve (one per seed) from a curve or a sequence of curves."""
    group = [value] if isinstance(value, RobustnessCurve) else list(value) if isinstance(value, Sequence) else None
    if not group or not all(isinstance(c, RobustnessCurve) for c in group):
        raise TypeError(f"curves[{label!r}] must be a RobustnessCurve or a non-empty sequence of them "
                        f"(one per seed), got {type(value).__name__}")
    if any(c.stds != group[0].stds for c in group):
        raise ValueError(f"curves[{label!r}]: the curves of one label must share their stds")
    return group


def robustness_curve(curves, ax=None, path=None, *, dpi: int = 150, title: Optional[str] = None,
                     band: bool = True):
    """Robustness curves: the metric against the test-time input noise std, one line per label.

    Args:
        curves: a :class:`noisefast.robustness.RobustnessCurve`, or a mapping label -> curve, or
            label -> sequence of curves (e.g. one per training seed): then the line is their mean
            and, with ``band``, a shaded band shows mean +- one standard deviation across them.
        ax: draw into this Axes instead of a new figure.
        path: write a PNG there.
        dpi: resolution of the PNG.
        title: the title (default says what is plotted).

    Returns:
        The Figure.
    """
    if isinstance(curves, RobustnessCurve):
        curves = {curves.metric: curves}
    if not isinstance(curves, Mapping) or not curves:
        raise TypeError(f"curves must be a RobustnessCurve or a non-empty mapping label -> curve(s), "
                        f"got {type(curves).__name__}")
    groups = {label: _curve_group(label, value) for label, value in curves.items()}
    metrics = {c.metric for group in groups.values() for c in group}
    fig, ax = _new_axes(ax, (7.0, 4.5))
    for label, group in groups.items():
        values = np.array([c.values for c in group], dtype=np.float64)
        mean = values.mean(axis=0)
        line, = ax.plot(group[0].stds, mean, marker="o", markersize=3.5, linewidth=1.6,
                        label=label if len(group) == 1 else f"{label} ({len(group)} runs)")
        if band and len(group) > 1:
            spread = values.std(axis=0, ddof=1)
            ax.fill_between(group[0].stds, mean - spread, mean + spread, color=line.get_color(), alpha=0.18,
                            linewidth=0)
    metric = metrics.pop() if len(metrics) == 1 else "metric"
    ax.set_xlabel("test-time input noise std")
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else f"Robustness to Gaussian input noise ({metric})")
    ax.grid(True, alpha=0.35)
    ax.legend(fontsize="small", loc="best")
    return _save(fig, path, dpi)


_STD_STYLES = ("-", "--", ":", "-.")


def robustness_history(trackers, stds: Optional[Sequence[float]] = None, ax=None, path=None, *, dpi: int = 150,
                       title: Optional[str] = None, area: bool = True, overuse: bool = True,
                       xlabel: str = "training step"):
    """The metric over training at each test-time noise std, from :class:`noisefast.RobustnessTracker`\\ s.

    Args:
        trackers: a RobustnessTracker (one line per std, in the colour cycle, plus the robustness
            area), or a mapping label -> tracker (one colour per run, one line style per std).
        stds: which stds to draw (default: all of them for one tracker; the smallest and the largest
            for several runs, so that the figure stays readable).
        ax: draw into this Axes instead of a new figure.
        path: write a PNG there.
        dpi: resolution of the PNG.
        title: the title (default says what is plotted).
        area: also draw the robustness area (the mean over every std of the tracker), dashed black for
            one tracker, dotted in the run's colour for several.
        overuse: mark the evaluations that signalled overuse (a cross on the clean line, or on the
            first drawn std).
        xlabel: what the trackers' steps count (e.g. "epoch").

    Returns:
        The Figure.
    """
    single = isinstance(trackers, RobustnessTracker)
    runs = {None: trackers} if single else trackers
    if not isinstance(runs, Mapping) or not runs:
        raise TypeError(f"trackers must be a RobustnessTracker or a non-empty mapping label -> tracker, "
                        f"got {type(trackers).__name__}")
    for label, tracker in runs.items():
        if not isinstance(tracker, RobustnessTracker):
            raise TypeError(f"trackers[{label!r}] must be a RobustnessTracker, got {type(tracker).__name__}")
    metrics = {t.metric_name for t in runs.values()}
    fig, ax = _new_axes(ax, (7.5, 4.5) if single else (11.0, 5.0))
    for k, (label, tracker) in enumerate(runs.items()):
        chosen = list(stds) if stds is not None else (
            list(tracker.stds) if single else sorted({min(tracker.stds), max(tracker.stds)}))
        steps = tracker.steps
        color = None if single else f"C{k % 10}"
        marked = False
        for j, std in enumerate(chosen):
            values = tracker.series(std)
            name = f"std {std:g}" if single else f"{label}, std {std:g}"
            line, = ax.plot(steps, values, marker="o", markersize=2.5, linewidth=1.5, label=name,
                            color=f"C{j % 10}" if single else color,
                            linestyle="-" if single else _STD_STYLES[j % len(_STD_STYLES)])
            if overuse and not marked:
                fired = [(r.step, v) for r, v in zip(tracker.history, values) if r.overuse]
                if fired:
                    ax.plot(*zip(*fired), linestyle="none", marker="x", markersize=8, color=line.get_color(),
                            label="overuse signal" if single else f"{label}: overuse signal")
                marked = True
        if area:
            ax.plot(steps, tracker.areas(), linewidth=1.3, color="black" if single else color,
                    linestyle="--" if single else ":", label="area (mean over stds)" if single else f"{label}, area")
    metric = metrics.pop() if len(metrics) == 1 else "metric"
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title if title is not None else f"Robustness during training ({metric} at each test-time noise std)")
    ax.grid(True, alpha=0.35)
    if single:
        ax.legend(fontsize="small", loc="best")
    else:  # one entry per run and std: beside the axes, not over the lines
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path, dpi)
