"""Schedules of noise magnitude: callables ``step -> value`` for the noise-injection regularisers.

Noise injected for robustness is often scheduled: rising or falling over training, or applied only at
intervals (docs/formulas.md, "Schedules of noise magnitude"). Each schedule here is a small
immutable callable ``schedule(step) -> float`` with ``step`` an int >= 0; they are exposed as
``noisefast.schedules.constant / linear / polynomial / cosine / interval``.

A regulariser multiplies its base ``std`` by ``schedule(step)`` (see
:class:`noisefast.regularizers.ScheduledNoise`), so a schedule is usually a factor going from 1 to 0
or from 0 to 1, but any non-negative values work.

Any callable ``int -> float`` is accepted where a schedule is; these classes add argument checks,
a readable ``repr`` and ``values(steps)`` for plotting.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Iterable, List, Union

from ._checks import check_int, check_real

__all__ = ["MagnitudeSchedule", "constant", "linear", "polynomial", "cosine", "interval", "check_schedule",
           "is_stateful"]

Schedule = Callable[[int], float]


def check_step(step) -> int:
    """``step`` as an int >= 0, or a TypeError/ValueError naming ``step``."""
    return check_int(step, "step", 0)


def check_schedule(schedule, name: str = "schedule"):
    """Return ``schedule`` if it is None or callable, else raise TypeError naming ``name``."""
    if schedule is not None and not callable(schedule):
        raise TypeError(f"{name} must be a callable step -> value (e.g. noisefast.schedules.linear(...)) "
                        f"or None, got {type(schedule).__name__}")
    return schedule


class MagnitudeSchedule:
    """Base class: ``schedule(step) -> float`` for ``step`` an int >= 0."""

    def __call__(self, step: int) -> float:
        return self._value(check_step(step))

    def _value(self, step: int) -> float:
        raise NotImplementedError

    def values(self, steps: Iterable[int]) -> List[float]:
        """The schedule at each of ``steps`` (for plots and tables)."""
        return [self(s) for s in steps]


class constant(MagnitudeSchedule):
    """``value`` at every step."""

    def __init__(self, value: float = 1.0):
        self.value = check_real(value, "value", nonnegative=True)

    def _value(self, step: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"constant({self.value})"


class _Ramp(MagnitudeSchedule):
    """From ``start`` at step 0 to ``end`` at ``total_steps``, then ``end``; subclasses give the shape."""

    def __init__(self, start: float, end: float, total_steps: int):
        self.start = check_real(start, "start", nonnegative=True)
        self.end = check_real(end, "end", nonnegative=True)
        self.total_steps = check_int(total_steps, "total_steps", 1)

    def _value(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return self.end + (self.start - self.end) * self._remaining(progress)

    def _remaining(self, progress: float) -> float:
        """Fraction of the way still to go, 1 at progress 0 and 0 at progress 1."""
        raise NotImplementedError

    def _args(self) -> str:
        return f"start={self.start}, end={self.end}, total_steps={self.total_steps}"


class linear(_Ramp):
    """Straight line: ``start + (end - start) * min(step, total_steps) / total_steps``."""

    def _remaining(self, progress: float) -> float:
        return 1.0 - progress

    def __repr__(self) -> str:
        return f"linear({self._args()})"


class polynomial(_Ramp):
    """Polynomial decay (the convention of TF's and transformers' ``PolynomialDecay``):
    ``end + (start - end) * (1 - min(step, T) / T) ** power``; ``power=1`` is :class:`linear`.
    """

    def __init__(self, start: float, end: float, total_steps: int, power: float = 2.0):
        super().__init__(start, end, total_steps)
        self.power = check_real(power, "power")
        if self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")

    def _remaining(self, progress: float) -> float:
        return (1.0 - progress) ** self.power

    def __repr__(self) -> str:
        return f"polynomial({self._args()}, power={self.power})"


class cosine(_Ramp):
    """Half-cosine (Loshchilov & Hutter 2017, SGDR):
    ``end + (start - end) * (1 + cos(pi * min(step, T) / T)) / 2``.
    """

    def _remaining(self, progress: float) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def __repr__(self) -> str:
        return f"cosine({self._args()})"


class interval(MagnitudeSchedule):
    """Noise only at scheduled intervals.

    On steps ``s >= start`` with ``(s - start) % every < duration`` the value is ``value`` (a number,
    or another schedule evaluated at ``s``); on every other step it is ``off`` (0 by default).

    Example: ``interval(1.0, every=10)`` injects noise on steps 0, 10, 20, ...;
    ``interval(linear(1, 0, 1000), every=100, duration=20)`` injects a falling magnitude during the
    first 20 steps of every 100.
    """

    def __init__(self, value: Union[float, Schedule], every: int, *, duration: int = 1, start: int = 0,
                 off: float = 0.0):
        if callable(value):
            self.value = value
        else:
            self.value = check_real(value, "value", nonnegative=True)
        self.every = check_int(every, "every", 1)
        self.duration = check_int(duration, "duration", 1)
        if self.duration > self.every:
            raise ValueError(f"duration must be <= every ({self.every}), got {self.duration}")
        self.start = check_int(start, "start", 0)
        self.off = check_real(off, "off", nonnegative=True)

    def active(self, step: int) -> bool:
        """Whether noise is on at ``step``."""
        step = check_step(step)
        return step >= self.start and (step - self.start) % self.every < self.duration

    def _value(self, step: int) -> float:
        if not self.active(step):
            return self.off
        return float(self.value(step)) if callable(self.value) else self.value

    def __repr__(self) -> str:
        return (f"interval({self.value!r}, every={self.every}, duration={self.duration}, "
                f"start={self.start}, off={self.off})")


def is_stateful(schedule) -> bool:
    """Whether ``schedule`` keeps state that a run must save (e.g. :class:`noisefast.schedules.adaptive`):
    it has ``state_dict()``, ``check_state_dict(state)`` (raises, changing nothing, on a bad state) and
    ``load_state_dict(state)``. The noise modules save such a schedule's state with their own."""
    return all(callable(getattr(schedule, name, None)) for name in ("state_dict", "check_state_dict", "load_state_dict"))
