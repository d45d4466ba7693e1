"""A noise magnitude driven by a metric: torch's ``ReduceLROnPlateau``, for noise.

The robustness material this project serves says to track noise-robustness metrics during
training, because their degradation signals that noise is overused, and then to adjust the noise
level (docs/formulas.md, "Schedules of noise magnitude"). :class:`adaptive` is that adjustment: a factor that
starts at ``value`` and is multiplied by ``factor`` (never below ``min_value``) each time

- a :class:`noisefast.RobustnessTracker` reports overuse (``schedule.step(overuse=tracker.overuse)``),
- or a monitored metric has not improved for more than ``patience`` calls (``schedule.step(metric)``,
  the rule of ``torch.optim.lr_scheduler.ReduceLROnPlateau``, its ``mode``, ``threshold``,
  ``threshold_mode`` and ``cooldown`` included).

As a schedule it is a callable ``step -> float``: ``value`` times ``base(step)`` when a step schedule
``base`` is given (``adaptive(base=cosine(1, 0.25, T))`` is cosine times adaptive). Give it to
``GaussianNoise``, ``WeightNoise`` (any :class:`noisefast.ScheduledNoise`) or ``GradientNoise`` like
any schedule. A noise module keeps the factor in the tensor its kernel reads and registers itself
here, so a reduction refreshes that tensor at once (a ``fill_``: no recompilation, no host sync).
Its state (value, best metric, counters) is saved in the module's ``state_dict`` (extra state) and
restored on load; a schedule shared by several modules is saved with each and restored alike.
"""
from __future__ import annotations

import math
import weakref
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ._checks import check_int, check_real
from .magnitude import MagnitudeSchedule, check_schedule

__all__ = ["adaptive"]

_STATE_KEYS = ("value", "best", "num_bad", "cooldown_counter", "num_reductions")


class adaptive(MagnitudeSchedule):
    """A magnitude factor reduced on overuse or on a plateau of a metric.

    ``schedule(step) = value * base(step)`` (``value`` alone without ``base``), where ``value``
    starts at the given ``value`` and each reduction sets ``value = max(value * factor, min_value)``.

    Two ways to drive it (call one of them once per evaluation, like ``ReduceLROnPlateau.step``):

    - ``step(overuse=flag)``: reduce when ``flag`` is true (e.g. ``tracker.overuse``: the tracker's
      rule already waits ``patience`` evaluations, so this one reduces at once unless in cooldown).
    - ``step(metric)``: ``ReduceLROnPlateau``'s rule. ``metric`` improves on ``best`` when
      ``metric > best * (1 + threshold)`` (mode "max", threshold_mode "rel"),
      ``metric > best + threshold`` ("max", "abs"), ``metric < best * (1 - threshold)`` ("min", "rel")
      or ``metric < best - threshold`` ("min", "abs"). An improvement sets ``best`` and resets the
      count of bad calls; otherwise the count grows, and when it exceeds ``patience`` the value is
      reduced and the count reset. After a reduction, ``cooldown`` calls are ignored.

    Args:
        value: the starting factor, >= 0.
        factor: the multiplier of a reduction, in [0, 1).
        min_value: the floor of ``value``, >= 0.
        patience: bad ``step(metric)`` calls tolerated before a reduction, int >= 0.
        mode: "max" (the metric should rise, e.g. accuracy) or "min" (e.g. a loss).
        threshold: the least change that counts as an improvement, >= 0.
        threshold_mode: "rel" or "abs" (see above).
        cooldown: calls ignored after a reduction, int >= 0.
        base: None, or a step schedule (``noisefast.schedules.cosine(...)`` etc.) that the value
            multiplies.

    State (``state_dict``): value, best, num_bad, cooldown_counter, num_reductions (numbers, so
    ``torch.load(weights_only=True)`` reads them); the arguments are the construction's.

    Example::

        schedule = noisefast.schedules.adaptive(1.0, factor=0.5, min_value=0.05)
        model = nn.Sequential(noisefast.GaussianNoise(0.5, schedule=schedule), net)
        tracker = noisefast.RobustnessTracker(val_loader, [0.0, 0.25, 0.5], every=1)
        for epoch in range(epochs):
            train_one_epoch(model)
            if tracker.step(model, epoch) is not None:
                schedule.step(overuse=tracker.overuse)     # the noise std halves on overuse
    """

    def __init__(self, value: float = 1.0, *, factor: float = 0.5, min_value: float = 0.0, patience: int = 10,
                 mode: str = "max", threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 base=None):
        self.initial_value = check_real(value, "value", nonnegative=True)
        self.factor = check_real(factor, "factor", nonnegative=True)
        if not self.factor < 1.0:
            raise ValueError(f"factor must be in [0, 1), got {self.factor}")
        self.min_value = check_real(min_value, "min_value", nonnegative=True)
        self.patience = check_int(patience, "patience", 0)
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.mode = mode
        self.threshold = check_real(threshold, "threshold", nonnegative=True)
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.threshold_mode = threshold_mode
        self.cooldown = check_int(cooldown, "cooldown", 0)
        if base is not None and isinstance(base, adaptive):
            raise TypeError("base must be a step schedule, not another adaptive schedule (its state would not be saved)")
        self.base = check_schedule(base, "base")
        self.value = self.initial_value
        self.best = self._worst()
        self.num_bad = 0
        self.cooldown_counter = 0
        self.num_reductions = 0
        self._listeners: List[weakref.ref] = []

    # --- the schedule -----------------------------------------------------------------------------

    def _value(self, step: int) -> float:
        return self.value if self.base is None else self.value * float(self.base(step))

    def _worst(self) -> float:
        return -math.inf if self.mode == "max" else math.inf

    def is_better(self, metric: float, best: float) -> bool:
        """Whether ``metric`` improves on ``best`` under mode, threshold and threshold_mode."""
        if self.mode == "max":
            bar = best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold
            return metric > bar
        bar = best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold
        return metric < bar

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def step(self, metric: Optional[float] = None, *, overuse: Optional[bool] = None) -> bool:
        """One evaluation: ``step(metric)`` (plateau rule) or ``step(overuse=flag)``. Returns whether
        the value was reduced. Modules using this schedule see the new value at once."""
        if (metric is None) == (overuse is None):
            raise TypeError("step takes exactly one of metric (a number) or overuse= (a bool)")
        if overuse is not None:
            if not isinstance(overuse, bool):
                raise TypeError(f"overuse must be a bool (e.g. tracker.overuse), got {type(overuse).__name__}")
            if self.in_cooldown:
                self.cooldown_counter -= 1
                return False
            return self.reduce() if overuse else False
        if isinstance(metric, torch.Tensor) and metric.numel() == 1:
            metric = metric.item()  # as ReduceLROnPlateau (a host read: pass a number to avoid it)
        metric = check_real(metric, "metric", allow_inf=True)
        if self.is_better(metric, self.best):
            self.best = metric
            self.num_bad = 0
        else:
            self.num_bad += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad = 0  # as ReduceLROnPlateau: bad calls during cooldown do not count
        if self.num_bad > self.patience:
            self.num_bad = 0
            return self.reduce()
        return False

    def reduce(self) -> bool:
        """``value = max(value * factor, min_value)`` now; starts the cooldown. Returns whether the
        value changed (False once it sits at ``min_value``)."""
        new = max(self.value * self.factor, self.min_value)
        changed = new < self.value
        self.cooldown_counter = self.cooldown
        if changed:
            self.value = new
            self.num_reductions += 1
            self._notify()
        return changed

    # --- modules that read the value ---------------------------------------------------------------

    def register_listener(self, module) -> None:
        """Called by a noise module built with this schedule: ``module.refresh_factor()`` runs after
        every change of the value. Held weakly (the schedule does not keep a module alive)."""
        if not callable(getattr(module, "refresh_factor", None)):
            raise TypeError(f"a listener must have a refresh_factor() method, got {type(module).__name__}")
        self._listeners = [r for r in self._listeners if r() is not None and r() is not module]
        self._listeners.append(weakref.ref(module))

    def _notify(self) -> None:
        for ref in list(self._listeners):
            module = ref()
            if module is not None:
                module.refresh_factor()

    def __getstate__(self) -> Dict[str, Any]:
        # Copies and pickles forget their listeners: the modules that are copied along re-register
        # (ScheduledNoise.__setstate__), so a copy never refreshes the original's modules.
        state = dict(self.__dict__)
        state["_listeners"] = []
        return state

    # --- state -------------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The mutable state: plain numbers (``torch.load(weights_only=True)`` reads them)."""
        return {key: getattr(self, key) for key in _STATE_KEYS}

    def check_state_dict(self, state) -> Tuple[float, float, int, int, int]:
        """The checked values of a state, in ``_STATE_KEYS`` order; raises (naming the entry) and
        changes nothing when the state is bad."""
        if not isinstance(state, Mapping):
            raise TypeError(f"adaptive state must be a mapping, got {type(state).__name__}")
        if set(state) != set(_STATE_KEYS):
            raise ValueError(f"adaptive state must have exactly the keys {list(_STATE_KEYS)}, got {sorted(state)}")
        value = check_real(state["value"], "state['value']", nonnegative=True)
        best = check_real(state["best"], "state['best']", allow_inf=True)
        counts = [check_int(state[k], f"state[{k!r}]", 0) for k in _STATE_KEYS[2:]]
        return (value, best, *counts)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a :meth:`state_dict`; everything is checked before anything changes."""
        checked = self.check_state_dict(state)
        changed = checked[0] != self.value
        for key, item in zip(_STATE_KEYS, checked):
            setattr(self, key, item)
        if changed:
            self._notify()

    def __repr__(self) -> str:
        text = (f"adaptive(value={self.value:g}, factor={self.factor}, min_value={self.min_value}, "
                f"patience={self.patience}, mode={self.mode!r}")
        if self.base is not None:
            text += f", base={self.base!r}"
        return text + f", num_reductions={self.num_reductions})"
