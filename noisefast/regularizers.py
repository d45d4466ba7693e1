"""Noise injection for robustness: modules that wrap the fused noise ops, with magnitude schedules."""
from __future__ import annotations

import struct
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ._checks import check_float_tensor, check_int_tensor, check_nonnegative_number, check_nonnegative_values, check_values
from ._compile import StepCounter
from ._dtensor import is_dtensor
from ._library import plain_tensor, runs_eagerly
from .magnitude import check_schedule, check_step, is_stateful, schedule_at
from .ops.gaussian_noise import add_gaussian_noise, gaussian_noise, noise_scale
from .random import check_generator_state, draw_seed_for

__all__ = ["ScheduledNoise", "GaussianNoise", "set_noise_step"]


def _float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (as a Python float)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def _check_std_tensor(std: torch.Tensor) -> None:
    if not std.is_floating_point():
        raise TypeError(f"std must be a float tensor, got {std.dtype}")
    check_nonnegative_values(std, "std")


class ScheduledNoise(nn.Module):
    """Base of the noise modules whose magnitude follows a schedule.

    The magnitude used at the current step is ``std * schedule(num_steps)`` (just ``std`` when
    ``schedule`` is None). ``num_steps`` starts at 0; :meth:`step` advances it (call it once per
    optimiser step, like a learning-rate scheduler), or assign it, or call
    :func:`set_noise_step` on a whole model. It is saved in ``state_dict()`` (as the module's extra
    state), so a resumed run continues the schedule.

    Args:
        std: a number >= 0, or a float tensor of values >= 0 (kept as a buffer so it follows
            ``.to(device)``; its shape must broadcast against what the subclass perturbs). A tensor's
            values are checked here and when a state_dict is loaded, not on every forward.
        schedule: None, or a callable ``step -> float >= 0`` such as
            ``noisefast.schedules.linear(1.0, 0.0, total_steps)``. A stateful schedule
            (``noisefast.schedules.adaptive``: ``state_dict`` / ``check_state_dict`` /
            ``load_state_dict``) has its state saved in this module's extra state; one with
            ``register_listener`` calls :meth:`refresh_factor` whenever its value changes.
    """

    def __init__(self, std: Union[float, torch.Tensor], schedule=None):
        super().__init__()
        self.generator: Optional[torch.Generator] = None  # subclasses that draw noise may set one
        if isinstance(std, torch.Tensor):
            _check_std_tensor(std)
            self.register_buffer("std", std.detach().clone())
        else:
            self.std = check_nonnegative_number(std, "std")
        self._schedule = check_schedule(schedule)
        # The factor lives in a tensor that the kernels read, so that a changing magnitude neither
        # recompiles a torch.compile'd model (Python numbers are specialised) nor breaks CUDA-graph
        # replay. Eager, it is recomputed on the host, and checked, whenever num_steps changes;
        # traced or captured, on the device from the step counter (schedule.at, _factor_at).
        self.register_buffer("_factor", None if schedule is None else torch.ones((), dtype=torch.float64),
                             persistent=False)
        self._counter = StepCounter(0)
        self._host_sigma = None  # (see _sigma_on_host) set with the factor on the host
        # The same factor rounded to float32, shaped [1]: the scale operand itself for inputs whose
        # kernels compute in float32 (they would round the float64 factor to float32 on every call).
        self.register_buffer("_factor_float32", None if schedule is None else torch.ones(1, dtype=torch.float32),
                             persistent=False)
        self.num_steps = 0
        self._listen_to_schedule()

    def _listen_to_schedule(self) -> None:
        register = getattr(self._schedule, "register_listener", None)
        if callable(register):
            register(self)

    def __setstate__(self, state) -> None:
        # copy.deepcopy and pickle: a stateful schedule's copy forgets its listeners, so register again
        super().__setstate__(state)
        self._listen_to_schedule()

    def refresh_factor(self) -> None:
        """Re-evaluate the schedule at ``num_steps`` into the factor tensor (a stateful schedule
        calls this when its value changes between steps)."""
        self.num_steps = self.num_steps

    @property
    def schedule(self):
        """The magnitude schedule (None: constant ``std``); fixed at construction, since the kernels
        read the factor from a buffer that exists only for a scheduled module."""
        return self._schedule

    @property
    def num_steps(self) -> int:
        """Steps taken so far; the schedule is evaluated at this step. Assigning it takes an int, or
        a 0-d integer tensor (kept on the device). Reading it after steps taken inside a compiled
        or captured region reads the device counter once (a synchronisation); such a region itself
        must not read it (a Python int in a graph is a recompile per value)."""
        return self._counter.value

    @num_steps.setter
    def num_steps(self, step: Union[int, torch.Tensor]) -> None:
        if isinstance(step, torch.Tensor) or self._counter.on_device():
            if isinstance(step, torch.Tensor):
                check_int_tensor(step, "step")
                check_values(step >= 0, "step must be >= 0")
            else:
                step = check_step(step)
            self._counter.set(step)
            self._refresh_factor()
            return
        step = check_step(step)
        if self.schedule is not None:
            value = check_nonnegative_number(self.schedule(step), "schedule(step)")
            self._factor.fill_(value)
            self._factor_float32.fill_(value)
            self._host_sigma = self._sigma_on_host(value)
        self._counter.set(step)

    def _sigma_on_host(self, factor: float):
        """(std, magnitude for float32-math inputs, for float64 inputs) as Python numbers: the products
        the kernels form from ``std`` and the factor tensor. In float64, ``std * factor``. In float32,
        float32(std) * float32(factor): two float32 values multiply exactly in a double (24 + 24
        significant bits), and the kernel's one rounding of that double to float32 is the rounding
        of the float32 product. None when std is a tensor."""
        std = self.std
        if type(std) is not float:
            return None
        return (std, _float32(std) * _float32(factor), std * factor)

    def _refresh_factor(self) -> None:
        """The factor from the device counter, on the device (checked there: >= 0 and finite)."""
        self._host_sigma = None  # the factor is known on the device only
        if self._factor is not None:
            self._factor.copy_(schedule_at(self.schedule, self._counter.tensor.to(self._factor.device)))
            self._factor_float32.copy_(self._factor.reshape(1))

    def factor(self) -> float:
        """``schedule(num_steps)`` (1.0 without a schedule)."""
        return 1.0 if self.schedule is None else float(self.schedule(self.num_steps))

    def current_std(self) -> Union[float, torch.Tensor]:
        """The magnitude used by the next forward: ``std * schedule(num_steps)``."""
        factor = self.factor()
        return self.std if factor == 1.0 else self.std * factor

    def magnitude(self) -> Union[float, torch.Tensor]:
        """``std * schedule(num_steps)`` for the kernels: ``std`` itself without a schedule, else a
        tensor (the factor is read by the kernel, so a changing schedule neither recompiles nor syncs)."""
        return self.std if self._factor is None else self.std * self._factor

    def noise_scale(self, x: torch.Tensor):
        """``(std_value, scale, inner)`` of the gaussian_noise op for input x, schedule included."""
        if runs_eagerly():  # (first: traced by torch.compile nothing below is read, so nothing is guarded)
            host_sigma = self._host_sigma
            if host_sigma is not None and host_sigma[0] is self.std and x.is_cpu and plain_tensor(x):
                # Eager on the CPU with a number std (the one the products were formed with): the
                # magnitude as a number, the product the kernel would form from std and the factor
                # tensor, to the bit (see _sigma_on_host).
                return host_sigma[2 if x.dtype == torch.float64 else 1], None, 1
        std_value, scale, inner = noise_scale(x, self.std)
        if self._factor is None:
            return std_value, scale, inner
        if x.dtype != torch.float64 and (scale is None or scale.dtype == torch.float32):
            # Arithmetic in float32 (the kernels' for non-float64 x, and scale * factor's for a float32
            # scale): the factor rounded once to float32, as the float64 factor would be.
            factor = self._factor_float32
            if factor.device != x.device:
                factor = factor.to(x.device)
            return std_value, (factor if scale is None else scale * factor), inner
        factor = self._factor.to(x.device)
        return std_value, (factor.reshape(1) if scale is None else scale * factor), inner

    def step(self, steps: int = 1) -> None:
        """Advance the schedule by ``steps`` (>= 0). Traceable: inside a torch.compile'd step (or a
        CUDA-graph capture) the counter and the factor are updated on the device, so the step
        neither recompiles nor synchronises."""
        steps = check_step(steps)
        if self._counter.on_device():
            self._counter.advance(steps)
            self._refresh_factor()
        else:
            self.num_steps = self.num_steps + steps

    def _apply(self, fn, recurse=True):
        # .half()/.bfloat16()/.double() cast buffers: the factor would be rounded (or underflow to 0), so it
        # is rebuilt in float64 (and float32) on its new device from the schedule itself. The step counter
        # follows the factor (or std) to its device.
        module = super()._apply(fn, recurse)
        # Rebuilt every time, not only on a dtype change: to_empty keeps the dtype and leaves the
        # memory uninitialised.
        if self._factor is not None:
            self._factor = torch.full((), self.factor(), dtype=torch.float64, device=self._factor.device)
        if self._factor_float32 is not None:
            self._factor_float32 = torch.full((1,), self.factor(), dtype=torch.float32,
                                              device=self._factor_float32.device)
        anchor = self._factor if self._factor is not None else self.std
        if isinstance(anchor, torch.Tensor) and anchor.device != self._counter.device:
            self._counter.to(anchor.device)
        return module

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # Everything is checked before anything is loaded, so that a failed load changes nothing here.
        std = state_dict.get(prefix + "std")
        if isinstance(std, torch.Tensor):
            _check_std_tensor(std)
            if isinstance(self.std, torch.Tensor) and std.shape != self.std.shape:
                raise ValueError(f"std in the state_dict has shape {tuple(std.shape)}, this module's has "
                                 f"shape {tuple(self.std.shape)}")
        extra_key = prefix + "_extra_state"
        if extra_key in state_dict:
            self._check_extra_state(state_dict[extra_key])
        self._check_subtree_tensors(state_dict, prefix, strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if extra_key not in state_dict and extra_key in missing_keys:
            # A checkpoint from before the step count was saved: keep the current step.
            missing_keys.remove(extra_key)

    def _check_subtree_tensors(self, state_dict, prefix: str, strict: bool) -> None:
        """ValueError unless the tensors of this module and its submodules (a wrapped model's too)
        fit ``state_dict``: same shapes, and with ``strict`` none missing and no unknown key. torch's
        load_state_dict copies tensor by tensor and raises only at the end, after this module's step
        and generator state would have been set: checked here first, a failed load changes nothing."""
        ours = self.state_dict(prefix=prefix, keep_vars=True)
        for key, mine in ours.items():
            if not isinstance(mine, torch.Tensor):
                continue  # an extra state, checked by its module
            theirs = state_dict.get(key)
            if theirs is None:
                if strict:
                    raise ValueError(f"state_dict is missing {key!r}")
            elif not isinstance(theirs, torch.Tensor) or theirs.shape != mine.shape:
                raise ValueError(f"state_dict[{key!r}] must be a tensor of shape {tuple(mine.shape)}, got "
                                 f"{tuple(theirs.shape) if isinstance(theirs, torch.Tensor) else type(theirs).__name__}")
        if strict:
            unexpected = sorted(k for k in state_dict if k.startswith(prefix) and k not in ours)
            if unexpected:
                raise ValueError(f"state_dict has unexpected keys {unexpected}")

    def get_extra_state(self) -> Dict[str, Any]:
        """{"num_steps"}; "generator": the state of the module's generator when it has one (so a run
        resumed with ``generator=`` draws the noise the uninterrupted run would have); "schedule": the
        state of a stateful schedule (``noisefast.schedules.adaptive``)."""
        state: Dict[str, Any] = {"num_steps": self.num_steps}
        generator = getattr(self, "generator", None)
        if generator is not None:
            state["generator"] = generator.get_state()
        if is_stateful(self.schedule):
            state["schedule"] = self.schedule.state_dict()
        return state

    def set_extra_state(self, state: Dict[str, Any]) -> None:
        step, generator_state, schedule_state = self._check_extra_state(state)
        if schedule_state is not None:
            self.schedule.load_state_dict(schedule_state)
        self.num_steps = step
        if generator_state is not None:
            self.generator.set_state(generator_state)

    def _check_extra_state(self, state):
        """(num_steps, generator state or None, schedule state or None) of a checked extra state;
        nothing is changed."""
        if not isinstance(state, dict) or "num_steps" not in state:
            raise ValueError(f"{type(self).__name__} state must be a dict with 'num_steps', got {state!r}")
        unexpected = set(state) - {"num_steps", "generator", "schedule"}
        if unexpected:
            raise ValueError(f"{type(self).__name__} state has unexpected keys {sorted(unexpected)}")
        step = check_step(state["num_steps"])
        if self.schedule is not None:
            check_nonnegative_number(self.schedule(step), "schedule(step)")
        generator_state = state.get("generator")
        if generator_state is not None:
            generator = getattr(self, "generator", None)
            if generator is None:
                raise ValueError(f"the {type(self).__name__} state holds a generator state, but this module has no "
                                 "generator: build it with generator= to resume the same noise")
            check_generator_state(generator_state, generator, f"{type(self).__name__} state['generator']")
        schedule_state = state.get("schedule")
        if schedule_state is not None:
            if not is_stateful(self.schedule):
                raise ValueError(f"the {type(self).__name__} state holds a schedule state, but this module's "
                                 f"schedule ({self.schedule!r}) keeps none")
            self.schedule.check_state_dict(schedule_state)
        return step, generator_state, schedule_state

    def _std_repr(self) -> str:
        std = self.std if not isinstance(self.std, torch.Tensor) else f"tensor{tuple(self.std.shape)}"
        text = f"std={std}"
        if self.schedule is not None:
            text += f", schedule={self.schedule!r}, num_steps={self.num_steps}"
        return text


def set_noise_step(module: nn.Module, step: Union[int, torch.Tensor]) -> int:
    """Set ``num_steps = step`` on every :class:`ScheduledNoise` in ``module`` (itself included).

    Returns how many modules were set. Use it once per training step to keep every noise schedule of
    a model on the optimiser's step count. ``step``: an int >= 0, or a 0-d integer tensor.
    Traceable: inside a torch.compile'd step (or a CUDA-graph capture) the counters and factors are
    set on the device, so a changing step neither recompiles nor synchronises.
    """
    if not isinstance(step, torch.Tensor):
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

    Same semantics as Keras' ``GaussianNoise`` layer (docs/formulas.md, "Regularising noise"),
    fused into one pass (see :func:`noisefast.gaussian_noise`), with an optional magnitude schedule:
    ``std_t = std * schedule(num_steps)`` (see :class:`ScheduledNoise`).

    ``std`` is a number >= 0 or a tensor broadcastable to the input (for example one value per
    channel, shape [C, 1, 1]).

    Shapes: input (*), output (*), same dtype. Gradient: identity with respect to the input. A
    DTensor input (Shard/Replicate placements) gets the noise its unsharded tensor would get under
    the same seed, each rank on its own shard (see :func:`noisefast.gaussian_noise`).

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
        if type(x) is not torch.Tensor and is_dtensor(x):
            # Each rank's shard, noise by global index (noisefast.gaussian_noise on DTensors).
            return gaussian_noise(x, self.magnitude(), generator=self.generator)
        check_float_tensor(x, "x")
        std_value, scale, inner = self.noise_scale(x)
        return add_gaussian_noise(x, draw_seed_for(x, self.generator), std_value, scale, inner, True)

    def extra_repr(self) -> str:
        return self._std_repr()
