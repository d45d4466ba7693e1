"""Robustness tracked during training, and the signal that noise is overused.

The robustness material this project serves recommends watching noise-robustness metrics while a
model trains: when they degrade, the injected noise is probably too strong or too frequent, and its
level or schedule should be adjusted (docs/formulas.md, "Robustness tracked during training").
:class:`RobustnessTracker` measures :func:`noisefast.robustness_curve` every ``every`` steps (or
epochs) on held-out data, keeps the history, and applies the overuse rule below;
:class:`noisefast.schedules.adaptive` turns the signal into a smaller noise magnitude.

The overuse rule (mode "max", a metric that should rise such as accuracy; "min" mirrors it). At
evaluation k, with c_k the clean metric (std 0) and n_k the noisy metric (the mean over the stds > 0):

- degraded_k: ``c_k < ref_k - tolerance``, with ``ref_k = reference`` (the clean metric of a run
  without noise) when given, else ``ref_k = max(c_1, ..., c_k)`` (the best clean metric so far);
- stalled_k: ``n_k <= max(n_1, ..., n_{k-1}) + min_delta`` (the noisy metrics no longer improve;
  false at the first evaluation);
- bad_k = degraded_k and stalled_k; the count of consecutive bad evaluations grows with each bad one
  and returns to 0 at a good one. When it reaches ``patience`` the evaluation signals overuse
  (``record.overuse``, ``tracker.overuse``) and the count returns to 0, so a persisting condition
  signals again after ``patience`` more evaluations (as ``ReduceLROnPlateau`` reduces again).
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from ._checks import check_int, check_real
from .robustness import Metric, RobustnessCurve, as_batches, check_stds, metric_fn, robustness_curve

__all__ = ["RobustnessTracker", "RobustnessRecord"]

_STATE_VERSION = 1


@dataclass(frozen=True)
class RobustnessRecord:
    """One evaluation of a :class:`RobustnessTracker`.

    Attributes:
        step: the training step (or epoch) of the evaluation.
        curve: the :class:`noisefast.RobustnessCurve` measured.
        clean: the metric at std 0.
        noisy: the mean of the metric over the stds > 0.
        degraded: the clean metric is below its reference by more than the tolerance.
        stalled: the noisy metric did not improve on its best by more than min_delta.
        bad_count: consecutive bad evaluations so far (0 after the overuse signal fires).
        overuse: the overuse signal fired at this evaluation.
    """
    step: int
    curve: RobustnessCurve
    clean: float
    noisy: float
    degraded: bool
    stalled: bool
    bad_count: int
    overuse: bool

    @property
    def area(self) -> float:
        """The robustness area of the curve: the mean of the metric over the stds."""
        return self.curve.area()


@dataclass(frozen=True)
class _RuleState:
    """What the overuse rule remembers between evaluations."""
    best_clean: float
    best_noisy: float
    bad_count: int


class RobustnessTracker:
    """Measures the robustness curve during training and signals overuse of noise.

    ``tracker.step(model, step)`` evaluates when ``step % every == 0`` (and returns the
    :class:`RobustnessRecord`, else None); ``tracker.evaluate(model, step)`` evaluates now. Each
    evaluation is :func:`noisefast.robustness_curve` on ``data`` (eval mode, ``no_grad``, every
    submodule's mode restored afterwards) with noise from the tracker's own generator: fresh at each
    evaluation, and the same for the same ``seed`` (``same_noise=True`` restarts it at every
    evaluation instead, so that successive evaluations differ by the model only). The overuse rule
    is the module's docstring's (noisefast/robustness_tracker.py) and docs/formulas.md's.

    Args:
        data: held-out data, re-iterable: a DataLoader, a list of (x, y) batches or one (x, y)
            pair. x: float [B, *]; y: what the metric takes.
        stds: test-time noise stds (numbers >= 0), including 0 (the clean metric) and at least one
            std > 0.
        metric: "accuracy" (default), "loss" (cross-entropy) or a callable ``(output, y) -> [B] or
            scalar`` (see :func:`noisefast.robustness_curve`).
        every: evaluate at the steps that are multiples of ``every`` (int >= 1).
        mode: "max" (the metric should rise) or "min"; default "min" for "loss", else "max".
        tolerance: how far (in metric units, >= 0) the clean metric may fall below its reference
            before it counts as degraded, e.g. 0.01 = one accuracy point.
        patience: consecutive bad evaluations that signal overuse (int >= 1).
        min_delta: the least rise (fall for "min") of the noisy metric that counts as an
            improvement (>= 0).
        reference: None (the reference is the best clean metric so far), or the clean metric of a
            reference run without noise: a number, or a RobustnessCurve (its value at std 0).
        seed: the seed of the tracker's generator (a CPU ``torch.Generator``, so the noise is the
            same on every device: the portable stream).
        same_noise: restart the generator from ``seed`` at every evaluation.
        device: where batches go (default: the model's device), as in ``robustness_curve``.
        progress: True: a tqdm progress bar over the batches at every evaluation; False: never;
            None (default): once an evaluation has taken longer than ``progress_after`` seconds, and
            only when tqdm is installed.
        progress_after: seconds (>= 0) after which an evaluation counts as long.

    State: :meth:`state_dict` (history and generator state: lists of numbers and a uint8 tensor,
    readable with ``torch.load(weights_only=True)``) and :meth:`load_state_dict` (checked entirely
    before anything changes; the rule's flags are recomputed from the history).
    """

    def __init__(self, data, stds: Sequence[float], metric: Union[str, Metric] = "accuracy", *, every: int = 1,
                 mode: Optional[str] = None, tolerance: float = 0.01, patience: int = 3, min_delta: float = 0.0,
                 reference: Union[None, float, RobustnessCurve] = None, seed: int = 0, same_noise: bool = False,
                 device: Union[str, torch.device, None] = None, progress: Optional[bool] = None,
                 progress_after: float = 10.0):
        self.stds = check_stds(stds)
        if 0.0 not in self.stds:
            raise ValueError(f"stds must include 0 (the clean metric), got {list(self.stds)}")
        if not any(s > 0 for s in self.stds):
            raise ValueError(f"stds must include at least one std > 0 (the noisy metrics), got {list(self.stds)}")
        self._metric, self.metric_name = metric_fn(metric)
        self.data = as_batches(data)
        if iter(self.data) is self.data:
            raise TypeError("data must be re-iterable (a DataLoader, a list of (x, y) batches or one (x, y) pair), "
                            "not a one-shot iterator: the tracker reads it at every evaluation")
        self.every = check_int(every, "every", 1)
        if mode is None:
            mode = "min" if metric == "loss" else "max"
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max', 'min' or None, got {mode!r}")
        self.mode = mode
        self.tolerance = check_real(tolerance, "tolerance", nonnegative=True)
        self.patience = check_int(patience, "patience", 1)
        self.min_delta = check_real(min_delta, "min_delta", nonnegative=True)
        if isinstance(reference, RobustnessCurve):
            if 0.0 not in reference.stds:
                raise ValueError("reference: the curve has no value at std 0")
            reference = reference.as_dict()[0.0]
        self.reference = None if reference is None else check_real(reference, "reference")
        self.seed = check_int(seed, "seed", 0)
        if not isinstance(same_noise, bool):
            raise TypeError(f"same_noise must be a bool, got {type(same_noise).__name__}")
        self.same_noise = same_noise
        self.device = None if device is None else torch.device(device)
        if progress is not None and not isinstance(progress, bool):
            raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")
        if progress:
            _tqdm()  # fails now, with the install hint, rather than at the first evaluation
        self.progress = progress
        self.progress_after = check_real(progress_after, "progress_after", nonnegative=True)
        self.generator = torch.Generator().manual_seed(self.seed)
        self._history: List[RobustnessRecord] = []
        self._rule = self._initial_rule()
        self._last_seconds = 0.0

    # --- evaluation --------------------------------------------------------------------------------

    def due(self, step: int) -> bool:
        """Whether :meth:`step` evaluates at ``step``."""
        return check_int(step, "step", 0) % self.every == 0

    def step(self, model, step: int) -> Optional[RobustnessRecord]:
        """Evaluate ``model`` if ``step`` is a multiple of ``every``; the record, else None."""
        return self.evaluate(model, step) if self.due(step) else None

    def evaluate(self, model, step: int) -> RobustnessRecord:
        """Measure the robustness curve of ``model`` now, record it at ``step`` and apply the rule.

        ``step`` must exceed the last recorded step (an int >= 0). An evaluation that raises (e.g.
        a metric of the wrong shape) leaves the history and the generator as they were."""
        step = check_int(step, "step", 0)
        if self._history and step <= self._history[-1].step:
            raise ValueError(f"step must increase: {step} after {self._history[-1].step}")
        generator_state = self.generator.get_state()  # before the reseed: a failure restores this
        if self.same_noise:
            self.generator.manual_seed(self.seed)
        data = self.data
        show = self.progress if self.progress is not None else (
            self._last_seconds > self.progress_after and _tqdm(required=False) is not None)
        if show:
            total = len(data) if hasattr(data, "__len__") else None
            data = _tqdm()(data, total=total, desc=f"robustness at step {step}", leave=False)
        start = time.perf_counter()
        try:
            curve = robustness_curve(model, data, self.stds, self._metric, generator=self.generator,
                                     device=self.device)
        except BaseException:
            self.generator.set_state(generator_state)  # a failed evaluation changes nothing
            raise
        self._last_seconds = time.perf_counter() - start
        record, self._rule = self._apply_rule(self._rule, step, curve)
        self._history.append(record)
        return record

    # --- the overuse rule --------------------------------------------------------------------------

    def _initial_rule(self) -> _RuleState:
        worst = -math.inf if self.mode == "max" else math.inf
        return _RuleState(worst, worst, 0)

    def _better(self, a: float, b: float) -> float:
        return max(a, b) if self.mode == "max" else min(a, b)

    def _apply_rule(self, rule: _RuleState, step: int, curve: RobustnessCurve) -> Tuple[RobustnessRecord, _RuleState]:
        values = curve.as_dict()
        clean = values[0.0]
        noisy_values = [v for s, v in values.items() if s > 0]
        noisy = math.fsum(noisy_values) / len(noisy_values)
        best_clean = self._better(rule.best_clean, clean)
        ref = best_clean if self.reference is None else self.reference
        sign = 1.0 if self.mode == "max" else -1.0
        degraded = sign * (ref - clean) > self.tolerance
        stalled = math.isfinite(rule.best_noisy) and not sign * (noisy - rule.best_noisy) > self.min_delta
        bad_count = rule.bad_count + 1 if (degraded and stalled) else 0
        overuse = bad_count >= self.patience
        if overuse:
            bad_count = 0
        record = RobustnessRecord(step, curve, clean, noisy, degraded, stalled, bad_count, overuse)
        return record, _RuleState(best_clean, self._better(rule.best_noisy, noisy), bad_count)

    # --- results -----------------------------------------------------------------------------------

    @property
    def history(self) -> Tuple[RobustnessRecord, ...]:
        """Every evaluation so far, in order."""
        return tuple(self._history)

    @property
    def latest(self) -> Optional[RobustnessRecord]:
        return self._history[-1] if self._history else None

    @property
    def overuse(self) -> bool:
        """Whether the latest evaluation signalled overuse (False before any). It stays set until the
        next evaluation: act on it once per evaluation (when :meth:`step` returns a record)."""
        return bool(self._history) and self._history[-1].overuse

    @property
    def steps(self) -> List[int]:
        return [r.step for r in self._history]

    def series(self, std: float) -> List[float]:
        """The metric at test-time ``std`` at every evaluation (for plots)."""
        if std not in self.stds:
            raise ValueError(f"std must be one of the tracker's stds {list(self.stds)}, got {std!r}")
        j = self.stds.index(std)
        return [r.curve.values[j] for r in self._history]

    def areas(self) -> List[float]:
        """The robustness area (mean of the metric over the stds) at every evaluation."""
        return [r.area for r in self._history]

    def summary(self) -> str:
        """One line about the latest evaluation."""
        r = self.latest
        if r is None:
            return f"robustness: no evaluation yet (every {self.every})"
        cells = " ".join(f"{s:g}:{v:.4f}" for s, v in zip(r.curve.stds, r.curve.values))
        ref = "reference" if self.reference is not None else "best"
        ref_value = self.reference if self.reference is not None else self._rule.best_clean
        text = (f"robustness at step {r.step}: {self.metric_name} by std {cells} | area {r.area:.4f} | "
                f"clean {r.clean:.4f} ({ref} {ref_value:.4f}) | bad {r.bad_count}/{self.patience}")
        return text + (" | OVERUSE" if r.overuse else "")

    def __repr__(self) -> str:
        return (f"RobustnessTracker(stds={list(self.stds)}, metric={self.metric_name!r}, every={self.every}, "
                f"mode={self.mode!r}, tolerance={self.tolerance}, patience={self.patience}, "
                f"evaluations={len(self._history)})")

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """History and generator state (numbers, lists, a uint8 tensor)."""
        return {
            "version": _STATE_VERSION,
            "stds": list(self.stds),
            "metric": self.metric_name,
            "steps": [r.step for r in self._history],
            "values": [list(r.curve.values) for r in self._history],
            "counts": [r.curve.count for r in self._history],
            "generator": self.generator.get_state(),
            "last_seconds": self._last_seconds,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`. Everything is checked first (a bad state raises, naming the
        entry, and changes nothing); the rule's flags are recomputed from the history with this
        tracker's settings."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping, got {type(state).__name__}")
        keys = {"version", "stds", "metric", "steps", "values", "counts", "generator", "last_seconds"}
        if set(state) != keys:
            raise ValueError(f"state must have exactly the keys {sorted(keys)}, got {sorted(state)}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(f"state['version'] must be {_STATE_VERSION}, got {state['version']!r}")
        if tuple(check_stds(state["stds"])) != self.stds:
            raise ValueError(f"state['stds'] {list(state['stds'])} differ from this tracker's {list(self.stds)}")
        if state["metric"] != self.metric_name:
            raise ValueError(f"state['metric'] {state['metric']!r} differs from this tracker's {self.metric_name!r}")
        steps, values, counts = state["steps"], state["values"], state["counts"]
        for name in ("steps", "values", "counts"):
            if not isinstance(state[name], (list, tuple)):
                raise TypeError(f"state[{name!r}] must be a list, got {type(state[name]).__name__}")
        if not len(steps) == len(values) == len(counts):
            raise ValueError(f"state: steps, values and counts must have one entry per evaluation, got "
                             f"{len(steps)}, {len(values)}, {len(counts)}")
        curves = []
        previous = -1
        for i, (step, row, count) in enumerate(zip(steps, values, counts)):
            step = check_int(step, f"state['steps'][{i}]", previous + 1)
            previous = step
            if not isinstance(row, (list, tuple)) or len(row) != len(self.stds):
                raise ValueError(f"state['values'][{i}] must hold {len(self.stds)} numbers")
            row = tuple(_check_metric_value(v, f"state['values'][{i}]") for v in row)
            curves.append((step, RobustnessCurve(self.stds, row, check_int(count, f"state['counts'][{i}]", 1),
                                                 self.metric_name)))
        generator = state["generator"]
        if not isinstance(generator, torch.Tensor):
            raise TypeError(f"state['generator'] must be a tensor (Generator.get_state()), got {type(generator).__name__}")
        probe = torch.Generator()
        try:
            probe.set_state(generator)
        except (RuntimeError, TypeError, ValueError) as exc:
            raise ValueError(f"state['generator'] is not a CPU generator state: {exc}") from None
        last_seconds = check_real(state["last_seconds"], "state['last_seconds']", nonnegative=True)
        rule = self._initial_rule()
        history = []
        for step, curve in curves:
            record, rule = self._apply_rule(rule, step, curve)
            history.append(record)
        self.generator.set_state(generator)
        self._history, self._rule, self._last_seconds = history, rule, last_seconds


def _check_metric_value(value, name: str) -> float:
    """A real number (NaN and infinities included: a diverged model's loss is saved as it was)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must hold real numbers, got {type(value).__name__}")
    return float(value)


def _tqdm(required: bool = True):
    """tqdm.tqdm, or None (required=False) / ImportError with the install hint when tqdm is missing."""
    try:
        from tqdm import tqdm
    except ImportError as exc:
        if not required:
            return None
        raise ImportError("progress=True needs tqdm: pip install tqdm") from exc
    return tqdm
