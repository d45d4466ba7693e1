"""Noise injection for robustness: modules that wrap the fused noise ops, with magnitude schedules."""
from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from .magnitude import check_schedule, check_step
from .ops._checks import check_nonnegative_number
from .ops.gaussian_noise import gaussian_noise

__all__ = ["ScheduledNoise", "GaussianNoise", "set_noise_step"]


class ScheduledNoise(nn.Module):
    """Base of the noise modules whose magnitude follows a schedule.

    The magnitude used at the current step is ``std * schedule(num_steps)`` (just ``std`` when
    ``schedule`` is None). ``num_steps`` starts at 0; :meth:`step` advances it (call it once per
    optimiser step, like a learning-rate scheduler), or assign it, or call
    :func:`set_noise_step` on a whole model. It is saved in ``state_dict()`` (as the module's extra
    state), so a resumed run continues the schedule.

    Args:
        std: a number >= 0, or a float tensor of values >= 0 (kept as a buffer so it follows
            ``.to(device)``; its shape must broadcast against what the subclass perturbs).
        schedule: None, or a callable ``step -> float >= 0`` such as
            ``noisefast.schedules.linear(1.0, 0.0, total_steps)``.
    """

    def __init__(self, std: Union[float, torch.Tensor], schedule=None):
        super().__init__()
        if isinstance(std, torch.Tensor):
            if not std.is_floating_point():
                raise TypeError(f"std must be a float tensor, got {std.dtype}")
            self.register_buffer("std", std.detach().clone())
        else:
            self.std = check_nonnegative_number(std, "std")
        self.schedule = check_schedule(schedule)
        self.num_steps = 0

    def factor(self) -> float:
        """``schedule(num_steps)`` (1.0 without a schedule), checked to be finite and >= 0."""
        if self.schedule is None:
            return 1.0
        return check_nonnegative_number(self.schedule(self.num_steps), "schedule(step)")

    def current_std(self) -> Union[float, torch.Tensor]:
        """The magnitude used by the next forward: ``std * schedule(num_steps)``."""
        factor = self.factor()
        return self.std if factor == 1.0 else self.std * factor

    def step(self, steps: int = 1) -> None:
        """Advance the schedule by ``steps`` (>= 0)."""
        self.num_steps += check_step(steps)

    def get_extra_state(self) -> Dict[str, Any]:
        return {"num_steps": self.num_steps}

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        if not isinstance(state, dict) or "num_steps" not in state:
            raise ValueError(f"{type(self).__name__} state must be a dict with 'num_steps', got {state!r}")
        self.num_steps = check_step(state["num_steps"])

    def _std_repr(self) -> str:
        std = self.std if not isinstance(self.std, torch.Tensor) else f"tensor{tuple(self.std.shape)}"
        text = f"std={std}"
        if self.schedule is not None:
            text += f", schedule={self.schedule!r}, num_steps={self.num_steps}"
        return text


def set_noise_step(module: nn.Module, step: int) -> int:
    """Set ``num_steps = step`` on every :class:`ScheduledNoise` in ``module`` (itself included).

    Returns how many modules were set. Use it once per training step to keep every noise schedule of
    a model on the optimiser's step count.
    """
    step = check_step(step)
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    count = 0
    for sub in module.modules():
        if isinstance(sub, ScheduledNoise):
            sub.num_steps = step
            count += 1
    return count


class GaussianNoise(ScheduledNoise):
    """Adds N(0, std_t^2) noise in training mode; the identity in eval mode.

    Same semantics as Keras' ``GaussianNoise`` layer (shared/formulas.md, activation/input noise),
    fused into one pass (see :func:`noisefast.gaussian_noise`), with an optional magnitude schedule:
    ``std_t = std * schedule(num_steps)`` (see :class:`ScheduledNoise`).

    ``std`` is a number >= 0 or a tensor broadcastable to the input (for example one value per
    channel, shape [C, 1, 1]).

    Shapes: input (*), output (*), same dtype. Gradient: identity with respect to the input.

    Example::

        noise = GaussianNoise(0.1, schedule=noisefast.schedules.linear(1.0, 0.0, total_steps=10_000))
        ...
        loss.backward(); optimizer.step(); noise.step()
    """

    def __init__(self, std: Union[float, torch.Tensor], schedule=None, *,
                 generator: Optional[torch.Generator] = None):
        super().__init__(std, schedule)
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return gaussian_noise(x, self.std, training=False)
        return gaussian_noise(x, self.current_std(), training=True, generator=self.generator)

    def extra_repr(self) -> str:
        return self._std_repr()
