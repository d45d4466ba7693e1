"""Annealed Gaussian gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise Improves
Learning for Very Deep Networks", arXiv:1511.06807)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch

from ._compile import eager_under_compile
from ._checks import check_int, check_real
from .magnitude import check_schedule, check_step, is_stateful
from .ops.foreach_gaussian_noise import foreach_gaussian_noise_
from .random import check_generator_state

__all__ = ["GradientNoise"]


def _collect_params(params) -> List[torch.Tensor]:
    """The tensors of an iterable of tensors, or of param-group dicts {"params": ...} like an optimizer's."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of param-group dicts, got a single tensor "
                        "(wrap it in a list)")
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors or of param-group dicts, "
                        f"got {type(params).__name__}") from None
    out: List[torch.Tensor] = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if "params" not in item:
                raise ValueError(f"params[{i}] is a param group without a 'params' entry")
            group = item["params"]
            group = [group] if isinstance(group, torch.Tensor) else list(group)
            for j, p in enumerate(group):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"params[{i}]['params'][{j}] must be a tensor, got {type(p).__name__}")
                out.append(p)
        elif isinstance(item, torch.Tensor):
            out.append(item)
        else:
            raise TypeError(f"params[{i}] must be a tensor or a param-group dict, got {type(item).__name__}")
    seen = set()
    for p in out:
        if id(p) in seen:
            raise ValueError("params lists a tensor more than once: its gradient would receive noise twice")
        seen.add(id(p))
    return out


class GradientNoise:
    """Adds annealed Gaussian noise to gradients: ``g <- g + N(0, sigma_t^2)``, in one fused launch
    per device (:func:`noisefast.foreach_gaussian_noise_`).

    Neelakantan et al. 2015 (arXiv:1511.06807), eq. (1): the VARIANCE anneals,

        sigma_t^2 = eta / (1 + t)^gamma,   i.e.   std_t = sqrt(eta / (1 + t)^gamma),

    with t the number of noise steps taken so far (0 at the first :meth:`step`), times
    ``schedule(t)`` when a magnitude schedule is given. The paper uses
    gamma = 0.55 and eta in {0.01, 0.3, 1.0}. (Some ports use eta / (1 + t)^gamma as the std: that is
    not the paper's schedule.)

    Args:
        params: an iterable of tensors (Parameters), or of param-group dicts like an optimizer's
            (``optimizer.param_groups`` works; only their "params" are used). A tensor may appear
            only once.
        eta: the initial variance, >= 0.
        gamma: the annealing exponent, >= 0.
        generator: where each step's seed is drawn (default: the default generator of each
            gradient's device). Under data parallelism pass a generator seeded identically on
            every rank, so that every replica adds the same noise.
        schedule: None, or a callable ``t -> factor >= 0`` (``noisefast.schedules``) that multiplies
            std_t, e.g. ``noisefast.schedules.adaptive(...)``, reduced when a robustness tracker
            signals overuse; a stateful schedule's state is saved in :meth:`state_dict`.

    Where to call it: after the gradients are final and before the optimizer uses them::

        scaler.scale(loss).backward()        # DDP all-reduces the gradients during backward
        scaler.unscale_(optimizer)            # noise is added to the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(...)   # (optional; before or after the noise, as you intend)
        grad_noise.step()                     # g += N(0, eta / (1 + t)^gamma); t += 1
        scaler.step(optimizer); scaler.update()

    Under DistributedDataParallel the noise must be identical on every rank, added after the
    all-reduce (or replicas drift apart): give every rank a ``torch.Generator`` seeded with the same
    number (on the gradients' device, or the CPU). With GradScaler, a step that the scaler skips
    (inf/NaN gradients) still advances t.

    Shapes and dtypes: any gradient shapes; float32, float16, bfloat16, float64 gradients (noise
    computed in float32, float64 for float64, rounded once). Gradients that are None are skipped;
    sparse gradients raise TypeError.
    """

    def __init__(self, params: Iterable[Union[torch.Tensor, Dict[str, Any]]], eta: float = 0.3,
                 gamma: float = 0.55, *, generator: Optional[torch.Generator] = None, schedule=None):
        self.params = _collect_params(params)
        self.eta = check_real(eta, "eta", nonnegative=True)
        self.gamma = check_real(gamma, "gamma", nonnegative=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        self.schedule = check_schedule(schedule)
        self.t = 0

    def std(self, step: Optional[int] = None) -> float:
        """sigma_t = sqrt(eta / (1 + t)^gamma) (times ``schedule(t)``) at ``step`` (default: the step
        the next :meth:`step` uses)."""
        t = self.t if step is None else check_step(step)
        sigma = math.sqrt(self.eta / (1.0 + t) ** self.gamma)
        if self.schedule is not None:
            sigma *= check_real(self.schedule(t), "schedule(t)", nonnegative=True)
        return sigma

    @eager_under_compile
    @torch.no_grad()
    def step(self) -> float:
        """Add N(0, sigma_t^2) to every ``p.grad`` that is not None, then t += 1. Returns sigma_t.

        Eager inside a torch.compile'd step (a graph break): t and sigma_t change at every call and
        would otherwise recompile the graph each step."""
        sigma = self.std()
        by_device: "OrderedDict[torch.device, List[torch.Tensor]]" = OrderedDict()
        for p in self.params:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
        if sigma > 0:
            for grads in by_device.values():
                foreach_gaussian_noise_(grads, sigma, generator=self.generator)
        self.t += 1
        return sigma

    def state_dict(self) -> Dict[str, Any]:
        """{"t", "eta", "gamma", "generator"} (and "schedule" with a stateful schedule): "generator" is
        the generator's state (``torch.Generator.get_state()``, a uint8 CPU tensor) when one was given,
        else None, so a run resumed with ``generator=`` draws the noise the uninterrupted run would
        have drawn; "schedule" is the schedule's ``state_dict()`` (``noisefast.schedules.adaptive``)."""
        state = {"t": self.t, "eta": self.eta, "gamma": self.gamma,
                 "generator": self.generator.get_state() if self.generator is not None else None}
        if is_stateful(self.schedule):
            state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore t, eta, gamma, the generator's state and a stateful schedule's state; everything is
        validated before anything changes. A state without "generator" (saved before it was kept)
        leaves the generator as it is; one without "schedule", the schedule."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        keys, required = set(state_dict), {"t", "eta", "gamma"}
        allowed = required | {"generator"} | ({"schedule"} if is_stateful(self.schedule) else set())
        if not required <= keys <= allowed:
            raise ValueError(f"state_dict must have the keys 't', 'eta', 'gamma' (and 'generator'; 'schedule' with a "
                             f"stateful schedule); missing {sorted(required - keys)}, unexpected {sorted(keys - allowed)}")
        t = check_int(state_dict["t"], "state_dict['t']", 0)
        eta = check_real(state_dict["eta"], "state_dict['eta']", nonnegative=True)
        gamma = check_real(state_dict["gamma"], "state_dict['gamma']", nonnegative=True)
        generator_state = state_dict.get("generator")
        if generator_state is not None:
            if self.generator is None:
                raise ValueError("state_dict['generator'] holds a generator state, but this GradientNoise has no "
                                 "generator: build it with generator= to resume the same noise")
            check_generator_state(generator_state, self.generator, "state_dict['generator']")
        schedule_state = state_dict.get("schedule")
        if schedule_state is not None:
            self.schedule.load_state_dict(schedule_state)  # checked before anything changes
        self.t, self.eta, self.gamma = t, eta, gamma
        if generator_state is not None:
            self.generator.set_state(generator_state)

    def __repr__(self) -> str:
        schedule = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return (f"GradientNoise({len(self.params)} tensors, eta={self.eta}, gamma={self.gamma}, t={self.t}{schedule}, "
                f"std={self.std():.4g})")
