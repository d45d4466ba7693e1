"""Exponential moving averages of model weights, updated by one fused kernel call per step.

``EMA(model)`` keeps shadow copies of a model's weights and averages them after each optimiser
step: ``shadow = decay * shadow + (1 - decay) * weight`` (computed as
``shadow.lerp_(weight, 1 - decay)``; see :func:`noisefast.ema_update_`). Every tracked tensor and
every profile is updated in one call of ``noisefast::ema_update_multi_`` (one multi-tensor CUDA
launch per as many tensors as its kernel arguments describe, one parallel pass on the CPU), each
weight read once however many profiles.

Decay schedules (docs/formulas.md, "EMA"):

- constant ``decay`` (``warmup=None``);
- diffusers' EMAModel (github.com/huggingface/diffusers, training_utils.py): with
  u = max(0, step - update_after_step - 1), decay 0 while u = 0 (the shadow copies the weights),
  then ``(1 + u) / (10 + u)`` (``warmup="ramp"``, diffusers' default) or
  ``1 - (1 + u / inv_gamma) ** -power`` (``warmup="inverse_gamma"``, diffusers'
  use_ema_warmup=True; inv_gamma = 1, power = 2/3 by default, power = 3/4 suits short runs),
  clamped to [min_decay, decay];
- EDM2's power-function profiles (Karras et al. 2024, "Analyzing and Improving the Training
  Dynamics of Diffusion Models", NVlabs/edm2 training/phema.py): ``sigma_rels=(0.05, 0.10)``
  tracks one profile per relative standard deviation, with decay ``(1 - 1/t) ** (gamma + 1)`` at
  update t = step - update_after_step (so t = 1 copies the weights).

What is tracked: every floating-point parameter has a shadow per profile; at each update a
parameter that does not require grad at that moment (an nn.Parameter with requires_grad=False)
is copied into its shadows instead of averaged, as diffusers' EMAModel does (it reads the flag at
every step), so freezing and unfreezing during training is followed. Plain tensors passed in a
list are averaged whatever their requires_grad; buffers (``include_buffers=True``) and
non-floating parameters are copied. Copying, not averaging, floating buffers is a choice:
BatchNorm running statistics are already averages, and EDM2 copies buffers as well; an average
of a step counter or a running variance has no use.

An EMA built from a module follows it by name: each update reads the tensors the module holds
then, so replacing a parameter (``load_state_dict(assign=True)``, ``to_empty``, a wrapper that
swaps parameters) does not leave the EMA averaging stale tensors. Wrapped models
(``torch.compile``, DDP) are tracked under the inner model's names.

Sharded models (FSDP2's ``fully_shard``, tensor parallelism: DTensor parameters): the shadows are
plain tensors shaped as this rank's local shards, averaged with no communication (the EMA is
elementwise). ``state_dict()`` wraps them as DTensors laid out as the parameters, for
``torch.distributed.checkpoint`` (resharding onto another world size included), and
``full_averaged()`` gathers the full weights (noisefast/sharded_state.py).

Precision: shadows are float32 by default whatever the weights' dtype (a float64 weight keeps a
float64 shadow). A bfloat16 shadow of a bfloat16 weight is allowed (``dtype=None`` or
``dtype=torch.bfloat16``) but is a trap: once (1 - decay) * |weight - shadow| is under half a
bfloat16 ulp of the shadow, the update rounds back to the shadow and the EMA stalls; with
decay = 0.9999 that is every step of a slowly moving weight.
"""
from __future__ import annotations

import contextlib
import math
import numbers
import operator
import sys
from collections.abc import Mapping, Sequence
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ._checks import check_int, check_int_tensor, check_real, check_values
from ._compile import StepCounter, mark_static
from .ops.ema_update import check_decay_number, run_ema_update
from .sharded_state import (ShardLayout, as_dtensor, check_sharded_value, gathered, is_dtensor, layout_of,
                            local_tensor, reshard_fsdp)

Warmup = Union[None, str, Callable[[int], float]]
WARMUPS = ("ramp", "inverse_gamma")
STATE_VERSION = 2  # 2: frozen parameters are averaged tensors (copied while frozen)

_GAMMA_MIN = -1.0  # power-function profiles need gamma > -1 to be integrable


# --------------------------------------------------------------------------------------------
# Schedules (host arithmetic on Python floats)

def gamma_to_sigma_rel(gamma: float) -> float:
    """EDM2 eq. 123: sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3))) of the
    power-function profile with exponent gamma (> -1)."""
    gamma = float(gamma)
    if not math.isfinite(gamma) or gamma <= _GAMMA_MIN:
        raise ValueError(f"gamma must be finite and > -1, got {gamma}")
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """EDM2 eq. 126 / Algorithm 2: gamma is the largest real root of
    g^3 + 7 g^2 + (16 - sigma_rel^-2) g + (12 - sigma_rel^-2). sigma_rel 0.05 -> 16.97,
    0.10 -> 6.94. Raises ValueError for sigma_rel outside (0, 1/sqrt(12) = 0.2887], i.e. gamma < 0
    (profiles that weigh the start of training most)."""
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, numbers.Real):
        raise TypeError(f"sigma_rel must be a real number, got {type(sigma_rel).__name__}")
    sigma_rel = float(sigma_rel)
    if not (math.isfinite(sigma_rel) and sigma_rel > 0):
        raise ValueError(f"sigma_rel must be finite and > 0, got {sigma_rel}")
    t = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - t, 12.0 - t])
    gamma = float(roots.real[np.abs(roots.imag) < 1e-9].max())
    if gamma < 0 or not math.isclose(gamma_to_sigma_rel(gamma), sigma_rel, rel_tol=1e-9):
        raise ValueError(f"sigma_rel must be in (0, {gamma_to_sigma_rel(0.0):.4f}], got {sigma_rel}")
    return gamma


def power_function_decay(t: int, gamma: float) -> float:
    """EDM2 eq. 127 with t counted in updates: (1 - 1/t)^(gamma + 1) for t >= 1 (0 at t = 1, so
    the first update copies the weights), 0 before. ``t`` an int, ``gamma`` finite and > -1."""
    t = check_int(t, "t", -2 ** 63)
    gamma = check_real(gamma, "gamma")
    if gamma <= _GAMMA_MIN:
        raise ValueError(f"gamma must be > -1, got {gamma}")
    return _power_function_decay(t, gamma)


def _power_function_decay(t: int, gamma: float) -> float:
    return (1.0 - 1.0 / t) ** (gamma + 1.0) if t >= 1 else 0.0


def check_warmup(warmup) -> Warmup:
    """``warmup`` if it is None, one of WARMUPS or a callable, else a ValueError naming it."""
    if warmup is None or callable(warmup) or (isinstance(warmup, str) and warmup in WARMUPS):
        return warmup
    raise ValueError(f"warmup must be None, one of {WARMUPS} or a callable u -> decay, got {warmup!r}")


def ema_decay(step: int, decay: float = 0.9999, *, warmup: Warmup = None, update_after_step: int = 0,
              inv_gamma: float = 1.0, power: float = 2.0 / 3.0, min_decay: float = 0.0) -> float:
    """The decay diffusers' EMAModel uses at optimisation step ``step`` (counted from 1).

    u = max(0, step - update_after_step - 1); 0 if u == 0 (copy the weights); otherwise the
    warmup's value clamped to [min_decay, decay]: ``decay`` (warmup=None), ``(1 + u) / (10 + u)``
    ("ramp"), ``1 - (1 + u / inv_gamma) ** -power`` ("inverse_gamma") or ``warmup(u)`` (a
    callable returning a number in [0, 1]). "ramp" at steps 1, 2, 3, 10, 100, 1000 with decay
    0.9999: 0, 0.1818, 0.25, 0.5263, 0.9174, 0.9911.

    Raises TypeError/ValueError naming the argument: ``step`` and ``update_after_step`` ints >= 0,
    ``decay`` and ``min_decay`` in [0, 1] with min_decay <= decay, ``inv_gamma`` and ``power``
    finite and > 0, ``warmup`` as above (and its value at u in [0, 1]).
    """
    step = check_int(step, "step", 0)
    decay = check_decay_number(decay, "decay")
    warmup = check_warmup(warmup)
    update_after_step = check_int(update_after_step, "update_after_step", 0)
    inv_gamma = check_real(inv_gamma, "inv_gamma", positive=True)
    power = check_real(power, "power", positive=True)
    min_decay = check_decay_number(min_decay, "min_decay")
    if min_decay > decay:
        raise ValueError(f"min_decay ({min_decay}) must not exceed decay ({decay})")
    return _scheduled_decay(step, decay, warmup, update_after_step, inv_gamma, power, min_decay)


def _scheduled_decay(step: int, decay: float, warmup: Warmup, update_after_step: int, inv_gamma: float,
                     power: float, min_decay: float) -> float:
    """:func:`ema_decay` on checked arguments (the EMA checks them once, at construction)."""
    u = max(0, step - update_after_step - 1)
    if u <= 0:
        return 0.0
    if warmup is None:
        value = decay
    elif warmup == "ramp":
        value = (1 + u) / (10 + u)
    elif warmup == "inverse_gamma":
        value = 1 - (1 + u / inv_gamma) ** -power
    else:
        value = warmup(u)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0:
            raise ValueError(f"warmup({u}) must return a number in [0, 1], got {value!r}")
        value = float(value)
    return max(min(value, decay), min_decay)


# --------------------------------------------------------------------------------------------
# Models: wrappers and the tensors behind names


def unwrap_model(module: nn.Module) -> nn.Module:
    """The module a wrapper runs, so that names are the inner model's: ``torch.compile``'s
    OptimizedModule (``_orig_mod.``), DistributedDataParallel and DataParallel (``module.``),
    unwrapped repeatedly. FSDP2 (``fully_shard``) keeps the module and its names; its parameters
    are DTensors, whose local shards the EMA averages (:func:`local_tensor`)."""
    while True:
        if isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
            continue
        eval_frame = sys.modules.get("torch._dynamo.eval_frame")  # loaded once torch.compile is used
        if eval_frame is not None and isinstance(module, eval_frame.OptimizedModule):
            module = module._orig_mod
            continue
        return module


class _NameResolver:
    """The tensors a module holds now under fixed names (parameters and buffers), found with one
    dict lookup per name plus one per submodule on its path, so that following a module whose
    tensors were replaced (load_state_dict(assign=True), ``module.weight = nn.Parameter(...)``,
    to_empty, a wrapper that swaps parameters) costs no tree walk per step."""

    def __init__(self, module: nn.Module, names: List[str], buffer_names: set):
        self.module = module
        self.names = names
        self.buffer_names = buffer_names
        self._bind()

    def _bind(self) -> None:
        # (dict that holds the tensor, key) per name, and (dict, key, module) per submodule on a path.
        slots, links, seen = [], [], set()
        for name in self.names:
            owner = self.module
            *path, leaf = name.split(".")
            for i, part in enumerate(path):
                child = owner._modules.get(part)
                if child is None:
                    raise ValueError(f"the model has no submodule {'.'.join(path[:i + 1])!r} (tracked tensor {name!r})")
                if (id(owner), part) not in seen:
                    seen.add((id(owner), part))
                    links.append((owner._modules, part, child))
                owner = child
            table = owner._buffers if name in self.buffer_names else owner._parameters
            if table.get(leaf) is None:
                raise ValueError(f"the model has no tensor named {name!r} any more")
            slots.append((table, leaf))
        self._slots, self._links = slots, links
        self._link_dicts = [d for d, _, _ in links]
        self._link_keys = [k for _, k, _ in links]
        self._link_children = [c for _, _, c in links]

    def current(self) -> List[torch.Tensor]:
        """The module's tensors under the names, now (rebinding if a submodule was replaced)."""
        if not all(map(operator.is_, map(dict.get, self._link_dicts, self._link_keys), self._link_children)):
            self._bind()
        try:
            return [table[key] for table, key in self._slots]
        except KeyError:
            self._bind()  # raises ValueError naming the tensor that is gone
            return [table[key] for table, key in self._slots]


def _named_tensors(model_or_params):
    """(named parameters, named buffers, the inner module or None for a list of tensors)."""
    if isinstance(model_or_params, nn.Module):
        module = unwrap_model(model_or_params)
        return list(module.named_parameters()), list(module.named_buffers()), module
    if isinstance(model_or_params, torch.Tensor) or not isinstance(model_or_params, Iterable):
        raise TypeError("model_or_params must be an nn.Module or an iterable of tensors, got "
                        f"{type(model_or_params).__name__}")
    params = list(model_or_params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"model_or_params[{i}] must be a tensor, got {type(p).__name__}")
    return [(str(i), p) for i, p in enumerate(params)], [], None


def _is_frozen(t: torch.Tensor) -> bool:
    """A parameter that does not require grad: copied, not averaged (diffusers' EMAModel reads
    requires_grad at every step; a plain tensor is averaged whatever its flag)."""
    return isinstance(t, nn.Parameter) and not t.requires_grad


def _check_sigma_rels(sigma_rels) -> List[float]:
    if isinstance(sigma_rels, (str, bytes, torch.Tensor)) or not isinstance(sigma_rels, Iterable):
        raise TypeError(f"sigma_rels must be a sequence of numbers, got {type(sigma_rels).__name__}")
    values = list(sigma_rels)
    if not values:
        raise ValueError("sigma_rels must hold at least one sigma_rel")
    for k, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise TypeError(f"sigma_rels[{k}] must be a real number, got {type(v).__name__}")
    return [float(v) for v in values]


# --------------------------------------------------------------------------------------------
# The EMA

class EMA:
    """Exponential moving average(s) of a model's weights.

    Args:
        model_or_params: an ``nn.Module`` (tensors named as in its state_dict) or an iterable of
            tensors (named "0", "1", ...). A module is followed by name: each update reads the
            tensors the module holds *then* (after ``load_state_dict(assign=True)``,
            ``module.weight = nn.Parameter(...)``, ``to_empty`` or a wrapper that replaces
            parameters), at the cost of one dict lookup per tensor when nothing changed. A
            wrapped model (``torch.compile``, DistributedDataParallel, DataParallel) is tracked
            under its inner model's names (:func:`unwrap_model`); an FSDP2 model's parameters are
            averaged shard by shard (each rank keeps its shards; :meth:`state_dict` holds them as
            DTensors, :meth:`full_averaged` gathers them). A list's tensors are kept as given.
        decay: the decay of a classic EMA, in [0, 1] (ignored with ``sigma_rels``).
        warmup: None (constant decay), "ramp", "inverse_gamma" or a callable u -> decay in [0, 1]
            (see :func:`ema_decay`).
        update_after_step: the first ``update_after_step + 1`` updates copy the weights.
        sigma_rels: relative standard deviations of EDM2 power-function profiles, one shadow
            per value (e.g. ``(0.05, 0.10)``); replaces ``decay`` and ``warmup``.
        include_buffers: also copy the module's buffers at each update.
        dtype: the shadows' dtype: float32 (default; float64 weights keep float64), None (each
            weight's own dtype), or float16/bfloat16/float64 for weights of that dtype only.
        device: where the shadows live (default: each weight's device). ``device="cpu"`` keeps
            a GPU model's EMA in host memory; each update then copies the weights to the host
            (a device-to-host transfer and a synchronisation per step). Not for sharded weights,
            whose shadows stay on their mesh's device type (ValueError).
        inv_gamma, power, min_decay: parameters of the schedules (see :func:`ema_decay`).

    What is averaged: every floating-point parameter (and every floating tensor of a list) has a
    shadow per profile. At each update a parameter that does not require grad *at that moment*
    is copied into its shadows instead of averaged, as diffusers' EMAModel does, so freezing and
    unfreezing during training is followed. Non-floating parameters and (with
    ``include_buffers``) buffers are copied.

    ``update(step=None)`` after each optimiser step; ``copy_to(model)``, ``store``/``restore``,
    ``with ema.average_parameters(model):`` to evaluate; ``state_dict()`` to checkpoint.
    ``snapshot()`` (power-function profiles) feeds post-hoc EMA (:class:`noisefast.PostHocEMA`).
    """

    def __init__(self, model_or_params, decay: float = 0.9999, *, warmup: Warmup = None,
                 update_after_step: int = 0, sigma_rels: Optional[Sequence[float]] = None,
                 include_buffers: bool = True, dtype: Optional[torch.dtype] = torch.float32,
                 device: Union[None, str, torch.device] = None, inv_gamma: float = 1.0,
                 power: float = 2.0 / 3.0, min_decay: float = 0.0):
        self.decay = check_decay_number(decay, "decay")
        self.warmup = check_warmup(warmup)
        self.update_after_step = check_int(update_after_step, "update_after_step", 0)
        self.inv_gamma = check_real(inv_gamma, "inv_gamma", positive=True)
        self.power = check_real(power, "power", positive=True)
        self.min_decay = check_decay_number(min_decay, "min_decay")
        if self.min_decay > self.decay:
            raise ValueError(f"min_decay ({self.min_decay}) must not exceed decay ({self.decay})")
        if sigma_rels is not None:
            sigma_rels = _check_sigma_rels(sigma_rels)
            if warmup is not None:
                raise ValueError("warmup does not apply to power-function profiles (sigma_rels)")
            self.sigma_rels: Optional[List[float]] = sigma_rels
            self.gammas: Optional[List[float]] = [sigma_rel_to_gamma(s) for s in sigma_rels]
        else:
            self.sigma_rels = self.gammas = None
        if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"dtype must be None, float32, float16, bfloat16 or float64, got {dtype}")
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else None
        if not isinstance(include_buffers, bool):
            raise TypeError(f"include_buffers must be a bool, got {type(include_buffers).__name__}")
        self.include_buffers = include_buffers

        params, buffers, module = _named_tensors(model_or_params)
        self._from_module = module is not None
        tracked = params + (buffers if include_buffers else [])
        if not tracked:
            raise ValueError("model_or_params has no tensors to track"
                             + (" (it has buffers only, and include_buffers is False)" if buffers else ""))
        averaged = [i for i, (_, t) in enumerate(params) if t.is_floating_point()]
        copied = [i for i in range(len(tracked)) if i >= len(params) or not params[i][1].is_floating_point()]
        self._avg_names: List[str] = [tracked[i][0] for i in averaged]
        self._copy_names: List[str] = [tracked[i][0] for i in copied]
        self._names = self._avg_names + self._copy_names
        # The tensors as built from: a list's, or the module's now (followed by name from here on).
        self._resolver = None if module is None else _NameResolver(
            module, self._names, {n for n, _ in buffers} if include_buffers else set())
        self._fixed_sources = None if module is not None else [tracked[i][1] for i in averaged + copied]
        # Where each tracked tensor's local shard sits in its global tensor (None: not sharded).
        self._layouts: List[Optional[ShardLayout]] = [layout_of(tracked[i][1], tracked[i][0])
                                                      for i in averaged + copied]
        if self.device is not None:
            for name, layout in zip(self._names, self._layouts):
                if layout is not None and torch.device(layout.mesh.device_type).type != self.device.type:
                    raise ValueError(f"device={self.device} cannot hold the shadow of {name}, sharded over a "
                                     f"{layout.mesh.device_type} mesh: keep sharded shadows on the mesh's device")
        # One shadow per profile for every averaged tensor; one copy for every copied tensor.
        self._shadows: List[List[torch.Tensor]] = [[] for _ in range(self.num_profiles)]
        self._copies: List[torch.Tensor] = []
        with torch.no_grad():
            for i in averaged:
                name, t = tracked[i]
                source = local_tensor(t).detach()
                shadow_dtype = self._shadow_dtype(source, name)
                for shadows in self._shadows:
                    shadows.append(source.to(device=self.device or source.device, dtype=shadow_dtype, copy=True))
            for i in copied:
                source = local_tensor(tracked[i][1]).detach()
                self._copies.append(source.to(device=self.device or source.device, copy=True))
        self._stored: Optional[List[torch.Tensor]] = None
        # The step and update counts live on the device of the first shadow, where a compiled (or
        # CUDA-graph) update computes the decays; the shadows are static inputs for CUDA graphs.
        first = (self._shadows[0] or self._copies)[0]
        self._step_counter = StepCounter(0, first.device)
        # num_updates = the eager updates (host) + the traced or captured ones (device): an eager
        # update then costs no second counter fill.
        self._eager_updates = 0
        self._traced_updates = StepCounter(0, first.device)
        for t in [s for shadows in self._shadows for s in shadows] + self._copies:
            mark_static(t)
        self._plan_key = None  # (the tensors followed, which averaged ones are frozen, their dtypes) the plan was made for
        self._plan = None
        self._current_plan()  # made now: a compiled update's first call then traces what every later call runs

    def _shadow_dtype(self, weight: torch.Tensor, name: str) -> torch.dtype:
        if self.dtype is None:
            return weight.dtype
        if weight.dtype == torch.float64 and self.dtype == torch.float32:
            return torch.float64
        ok = self.dtype == weight.dtype or (
            self.dtype == torch.float32 and weight.dtype in (torch.float16, torch.bfloat16))
        if not ok:
            raise TypeError(f"dtype {self.dtype} cannot shadow {name} ({weight.dtype}): a shadow has its "
                            "weight's dtype, or float32 for float16/bfloat16 weights")
        return self.dtype

    # ---------------------------------------------------------------------------------- updates

    @property
    def num_profiles(self) -> int:
        return len(self.sigma_rels) if self.sigma_rels is not None else 1

    @property
    def names(self) -> List[str]:
        """Names of the tracked tensors: averaged ones first, then copied ones."""
        return list(self._names)

    @property
    def step(self) -> int:
        """The step of the last update (0 before any). Read after compiled or captured updates, it
        reads the device counter once (a synchronisation)."""
        return self._step_counter.value

    @step.setter
    def step(self, value: int) -> None:
        self._step_counter.set(check_int(value, "step", 0))

    @property
    def num_updates(self) -> int:
        """The number of updates so far (read like :attr:`step`)."""
        return self._eager_updates + self._traced_updates.value

    @num_updates.setter
    def num_updates(self, value: int) -> None:
        self._eager_updates = check_int(value, "num_updates", 0)
        self._traced_updates.set(0)

    def power_time(self, step: Optional[int] = None) -> int:
        """t of the power-function profiles at ``step`` (default: the last update's step):
        step - update_after_step, the number of averaging updates so far."""
        return (self.step if step is None else check_int(step, "step", 0)) - self.update_after_step

    def decays_at(self, step: int) -> List[float]:
        """The decay of each profile at optimisation step ``step``."""
        step = check_int(step, "step", 0)
        if self.gammas is not None:
            t = step - self.update_after_step
            return [_power_function_decay(t, g) for g in self.gammas]
        return [_scheduled_decay(step, self.decay, self.warmup, self.update_after_step, self.inv_gamma,
                                 self.power, self.min_decay)]

    def tracked_tensors(self) -> List[torch.Tensor]:
        """The tensors the EMA follows now, in :attr:`names` order (a module's current tensors)."""
        return self._resolver.current() if self._resolver is not None else list(self._fixed_sources)

    def _current_plan(self):
        """(averaged groups, frozen pairs, copied pairs) for the tensors followed now; rebuilt only
        when a tensor was replaced or a parameter's requires_grad changed."""
        sources = self.tracked_tensors()
        n = len(self._avg_names)
        frozen = [_is_frozen(t) for t in sources[:n]]
        dtypes = [t.dtype for t in sources]  # .half()/.double() keep the Parameter, change its dtype
        key = self._plan_key
        if key is not None and frozen == key[1] and dtypes == key[2] and all(map(operator.is_, sources, key[0])):
            return self._plan
        if self.sharded and reshard_fsdp(self._resolver.module if self._resolver is not None else nn.Module()):
            sources = self.tracked_tensors()  # FSDP2 parameters left unsharded by a no_grad forward
            frozen = [_is_frozen(t) for t in sources[:n]]
            dtypes = [t.dtype for t in sources]
        # The tensors themselves (their local shards), not detached views: ``param.data = ...`` (what
        # .to(), .half(), .cuda() and to_empty do) swaps a Parameter's storage under the same object,
        # and a detached view would keep the old storage. Only read, with grad mode off.
        with torch.no_grad():
            locals_ = [local_tensor(t) for t in sources]
        for name, t, ours in zip(self._names, locals_, [s for s in self._shadows[0]] + self._copies):
            if t.shape != ours.shape:
                raise ValueError(f"the model's tensor {name} has shape {tuple(t.shape)} now, the EMA's is "
                                 f"{tuple(ours.shape)}: build the EMA after the model is wrapped or resized")
        for name, t, shadow in zip(self._avg_names, locals_[:n], self._shadows[0]):
            if not t.is_floating_point():
                raise TypeError(f"the model's tensor {name} is {t.dtype} now; the EMA averages it as a float tensor")
            if not (t.dtype == shadow.dtype or (shadow.dtype == torch.float32 and t.dtype in (torch.float16, torch.bfloat16))):
                raise TypeError(f"the model's tensor {name} is {t.dtype} now and its shadow is {shadow.dtype}: a "
                                "shadow has its weight's dtype, or float32 for float16/bfloat16 weights (build the "
                                "EMA after converting the model, or load its state into a new EMA)")
        groups: Dict[torch.device, List[int]] = {}
        for i in range(n):
            if not frozen[i]:
                groups.setdefault(locals_[i].device, []).append(i)
        averaged = [([self._shadows[p][i] for p in range(self.num_profiles) for i in indices],
                     [locals_[i] for i in indices]) for indices in groups.values()]
        frozen_pairs = [([shadows[i] for shadows in self._shadows], locals_[i]) for i in range(n) if frozen[i]]
        copied = list(zip(self._copies, locals_[n:]))
        self._plan = (averaged, frozen_pairs, copied)
        self._plan_key = (sources, frozen, dtypes)
        return self._plan

    def decays_on_device(self, step: torch.Tensor) -> torch.Tensor:
        """:meth:`decays_at` for ``step`` a 0-d integer tensor, computed on its device without
        reading it: float64 [P], the same formulas (:func:`ema_decay`, :func:`power_function_decay`)
        in tensor arithmetic. A callable ``warmup`` receives u as a 0-d float64 tensor there and
        must compute with tensor operations; its value is checked on the device."""
        if self.gammas is not None:
            t = (step - self.update_after_step).to(torch.float64)
            base = 1.0 - 1.0 / t.clamp(min=1.0)
            return torch.stack([torch.where(t >= 1, base ** (gamma + 1.0), 0.0) for gamma in self.gammas])
        u = (step - self.update_after_step - 1).clamp(min=0).to(torch.float64)
        if self.warmup is None:
            value = torch.full_like(u, self.decay)
        elif self.warmup == "ramp":
            value = (1 + u) / (10 + u)
        elif self.warmup == "inverse_gamma":
            value = 1 - (1 + u / self.inv_gamma) ** -self.power
        else:
            value = torch.as_tensor(self.warmup(u), dtype=torch.float64, device=u.device)
            check_values((value >= 0) & (value <= 1), "warmup(u) must be in [0, 1]")
        value = value.clamp(max=self.decay).clamp(min=self.min_decay)
        return torch.where(u > 0, value, 0.0).reshape(1)

    @torch.no_grad()
    def update(self, step: Union[None, int, torch.Tensor] = None) -> None:
        """Average the current weights into every profile (one fused call per device) and copy
        the copied tensors (and the parameters that do not require grad now). ``step``: the
        optimisation step just taken (default: the previous update's step + 1), which sets the
        decays: an int, or a 0-d integer tensor.

        Traceable by ``torch.compile(fullgraph=True)`` and CUDA graphs: there (and for a tensor
        ``step``) the step and update counts are device tensors and the decays are computed from
        them on the device (:meth:`decays_on_device`), so a compiled update neither recompiles nor
        synchronises as they change. Eagerly the decays are host arithmetic, as before. The
        update itself is one fused kernel call per device either way."""
        if isinstance(step, torch.Tensor) or self._step_counter.on_device():
            self._update_on_device(step)
            return
        step = self.step + 1 if step is None else check_int(step, "step", 0)
        self._average(self.decays_at(step), None)
        self.step = step
        self._eager_updates += 1

    def _update_on_device(self, step: Union[None, int, torch.Tensor]) -> None:
        if step is None:
            self._step_counter.advance()
        else:
            if isinstance(step, torch.Tensor):
                check_int_tensor(step, "step")
                check_values(step >= 0, "step must be >= 0")
            else:
                step = check_int(step, "step", 0)
            self._step_counter.set(step)
        self._average([], self.decays_on_device(self._step_counter.tensor))
        self._traced_updates.advance()

    def _average(self, decays: List[float], decay_tensor: Optional[torch.Tensor]) -> None:
        """One update with ``decays`` (floats) or ``decay_tensor`` (float64 [P] on a device)."""
        averaged, frozen, copied = self._current_plan()
        for shadows, sources in averaged:
            if sources[0].device != shadows[0].device:  # device= keeps the shadows elsewhere
                sources = [s.to(shadows[0].device) for s in sources]
            group_decays = None if decay_tensor is None else decay_tensor.to(shadows[0].device)
            run_ema_update(shadows, sources, decays, group_decays)
        targets = [shadow for shadows, _ in frozen for shadow in shadows] + [c for c, _ in copied]
        if targets:
            values = [source for shadows, source in frozen for _ in shadows] + [s for _, s in copied]
            torch._foreach_copy_(targets, values)

    # ------------------------------------------------------------------------------ applying

    def _profile_index(self, profile: Union[int, float]) -> int:
        if isinstance(profile, bool) or not isinstance(profile, numbers.Real):
            raise TypeError(f"profile must be an int index or a sigma_rel, got {type(profile).__name__}")
        if isinstance(profile, numbers.Integral):
            if not 0 <= profile < self.num_profiles:
                raise ValueError(f"profile must be in [0, {self.num_profiles}), got {profile}")
            return int(profile)
        for p, s in enumerate(self.sigma_rels or []):
            if math.isclose(s, profile, rel_tol=1e-9):
                return p
        raise ValueError(f"profile {profile} is not one of the tracked sigma_rels {self.sigma_rels}")

    def _targets(self, model) -> List[torch.Tensor]:
        """The tensors (local shards) of ``model`` matching the tracked names, checked to have
        the shadows' shapes (model=None: the tracked ones)."""
        if self.sharded:  # FSDP2 parameters left unsharded by a no_grad forward
            reshard_fsdp(self._resolver.module if model is None and self._resolver is not None else
                         model if isinstance(model, nn.Module) else nn.Module())
        if model is None:
            targets = self.tracked_tensors()
        elif isinstance(model, nn.Module):
            inner = unwrap_model(model)
            found = dict(inner.named_parameters())
            found.update(inner.named_buffers())
            missing = [n for n in self._names if n not in found]
            if missing:
                raise ValueError(f"model has no tensor named {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            targets = [found[n] for n in self._names]
        else:
            if self._from_module:
                raise ValueError("model must be an nn.Module (or None): this EMA was built from a module and "
                                 "matches tensors by name, which a list of tensors does not have")
            params, _, _ = _named_tensors(model)
            if len(params) != len(self._names):
                raise ValueError(f"model must be the {len(self._names)} tensors the EMA was built from, in "
                                 f"order, or an nn.Module; got {len(params)} tensors")
            by_name = dict(params)
            targets = [by_name[n] for n in self._names]
        targets = [local_tensor(t) for t in targets]
        for name, t, ours, layout in zip(self._names, targets, self._shadows[0] + self._copies, self._layouts):
            if t.shape != ours.shape:
                hint = "" if layout is None or t.shape != layout.shape else (
                    ": this EMA holds this rank's shards of a sharded model; an unsharded model takes "
                    "full_averaged() (load_state_dict)")
                raise ValueError(f"model tensor {name} has shape {tuple(t.shape)}, expected {tuple(ours.shape)}{hint}")
        return targets

    @torch.no_grad()
    def copy_to(self, model=None, profile: Union[int, float] = 0) -> None:
        """Write a profile's averages (and the copied tensors) into ``model``: an nn.Module
        (matched by name; a wrapper's inner model), the tensors the EMA was built from (in
        order; only for an EMA built from a list), or None (the tracked tensors themselves).
        ``profile``: an index, or one of the sigma_rels."""
        p = self._profile_index(profile)
        targets = self._targets(model)
        for target, value in zip(targets, self._shadows[p] + self._copies):
            target.copy_(value)

    @torch.no_grad()
    def store(self, model=None) -> None:
        """Save the current values of the tensors :meth:`copy_to` would overwrite."""
        self._stored = [t.detach().clone() for t in self._targets(model)]

    @torch.no_grad()
    def restore(self, model=None) -> None:
        """Put back the values saved by :meth:`store`."""
        if self._stored is None:
            raise RuntimeError("restore() needs a previous store()")
        for target, value in zip(self._targets(model), self._stored):
            target.copy_(value)
        self._stored = None

    @contextlib.contextmanager
    def average_parameters(self, model=None, profile: Union[int, float] = 0) -> Iterator[None]:
        """``with ema.average_parameters(model):`` runs the block with the averaged weights in
        ``model`` and restores the training weights after it, even on an exception."""
        self.store(model)
        try:
            self.copy_to(model, profile)
            yield
        finally:
            self.restore(model)

    def averaged(self, profile: Union[int, float] = 0) -> Dict[str, torch.Tensor]:
        """{name: tensor} of a profile's averages and the copied tensors (references, not copies)."""
        p = self._profile_index(profile)
        return dict(zip(self._names, self._shadows[p] + self._copies))

    # ------------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict:
        """The EMA's state: counters, profiles, averages (one {name: tensor} per profile; every
        floating parameter, frozen ones included) and copies (buffers, non-floating parameters).
        Tensors are references (as in nn.Module.state_dict); torch.save/torch.load with
        weights_only=True round-trip it. Version 1 states (frozen parameters under "copied")
        load too.

        Sharded weights (FSDP2, tensor parallelism: DTensor parameters): their averages and
        copies are DTensors with the parameter's mesh, placements and global shape, wrapping
        this rank's shadow shards (no copy), so ``torch.distributed.checkpoint`` saves the state
        and loads it, also onto another world size or into an unsharded EMA on one process::

            dcp.save({"ema": ema.state_dict()}, checkpoint_id=path)      # every rank
            state = {"ema": ema.state_dict()}                              # resuming: any world size
            dcp.load(state, checkpoint_id=path)                            # writes into the shards
            ema.load_state_dict(state["ema"])                              # step, num_updates
        """
        n = len(self._avg_names)
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "num_updates": self.num_updates,
            "sigma_rels": list(self.sigma_rels) if self.sigma_rels is not None else None,
            "averaged": [dict(zip(self._avg_names, self._as_global(shadows, self._layouts[:n])))
                         for shadows in self._shadows],
            "copied": dict(zip(self._copy_names, self._as_global(self._copies, self._layouts[n:]))),
        }

    @staticmethod
    def _as_global(tensors: List[torch.Tensor], layouts: List[Optional[ShardLayout]]) -> List[torch.Tensor]:
        return [t if layout is None else as_dtensor(t, layout) for t, layout in zip(tensors, layouts)]

    @property
    def layouts(self) -> List[Optional[ShardLayout]]:
        """Per tracked tensor (:attr:`names` order), the layout of its sharded weight (mesh,
        placements, global shape and stride of the DTensor parameter), or None if not sharded."""
        return list(self._layouts)

    @property
    def sharded(self) -> bool:
        """Whether any tracked tensor is sharded (a DTensor: FSDP2, tensor parallelism)."""
        return any(layout is not None for layout in self._layouts)

    @torch.no_grad()
    def full_averaged(self, profile: Union[int, float] = 0) -> Dict[str, torch.Tensor]:
        """{name: full tensor} of a profile's averages and the copied tensors, sharded ones
        gathered from every rank into plain tensors (the global shapes, the shadows' dtypes, on
        the shadows' devices): the weights of the EMA model for inference, ``torch.save`` or an
        evaluation on one device (``plain_model.load_state_dict(ema.full_averaged())`` with
        ``include_buffers=True``). With sharded weights this is a collective: every rank of the
        mesh calls it, and every rank receives the full tensors. New tensors, unsharded ones
        cloned (:meth:`averaged` gives references to the shadows)."""
        p = self._profile_index(profile)
        return {name: t.clone() if layout is None else gathered(t, layout)
                for name, t, layout in zip(self._names, self._shadows[p] + self._copies, self._layouts)}

    def upgraded(self, state):
        """A version-1 state as version 2 (:meth:`upgraded_tensors`); other states as they are."""
        if not isinstance(state, Mapping) or state.get("version") != 1:
            return state
        averaged, copied = self.upgraded_tensors(state.get("averaged"), state.get("copied"))
        return {**state, "version": STATE_VERSION, "averaged": averaged, "copied": copied}

    def upgraded_tensors(self, averaged, copied):
        """(averaged, copied) of a state or snapshot saved before version 2, where a frozen
        parameter was kept once under "copied": its value becomes its shadow in every profile.
        Anything malformed is returned as it is, for the checks to name."""
        if not (isinstance(averaged, Sequence) and not isinstance(averaged, (str, bytes))
                and isinstance(copied, Mapping) and all(isinstance(a, Mapping) for a in averaged)):
            return averaged, copied
        moved = {n: copied[n] for n in self._avg_names if n in copied and all(n not in a for a in averaged)}
        return [{**a, **moved} for a in averaged], {n: v for n, v in copied.items() if n not in moved}

    def check_tensors(self, averaged, copied, where: str, local: bool = False) -> None:
        """TypeError/ValueError unless ``averaged`` (one dict per profile) and ``copied`` hold
        exactly this EMA's tensors, shapes and kinds (see :func:`check_state_tensors`): sharded
        ones as DTensors laid out as the weights, or (``local``: a snapshot) also as local shards."""
        if isinstance(averaged, (str, bytes, Mapping)) or not isinstance(averaged, Sequence) \
                or len(averaged) != self.num_profiles:
            raise ValueError(f"{where}['averaged'] must be a list of {self.num_profiles} dicts")
        n = len(self._avg_names)
        for p, shadows in enumerate(averaged):
            check_state_tensors(shadows, f"{where}['averaged'][{p}]", self._avg_names, self._shadows[p], True,
                                self._layouts[:n], local)
        check_state_tensors(copied, f"{where}['copied']", self._copy_names, self._copies, False,
                            self._layouts[n:], local)

    def same_sigma_rels(self, theirs) -> bool:
        """Whether ``theirs`` (from a state or snapshot) are this EMA's sigma_rels (None for none)."""
        return (theirs is None and self.sigma_rels is None) or (
            isinstance(theirs, Sequence) and not isinstance(theirs, (str, bytes)) and self.sigma_rels is not None
            and len(theirs) == len(self.sigma_rels)
            and all(isinstance(a, numbers.Real) and not isinstance(a, bool) and math.isclose(a, b, rel_tol=1e-9)
                    for a, b in zip(theirs, self.sigma_rels)))

    def check_state(self, state) -> None:
        """TypeError/ValueError unless ``state`` is a valid :meth:`state_dict` for this EMA (nothing changes)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state).__name__}")
        for key in ("version", "step", "num_updates", "sigma_rels", "averaged", "copied"):
            if key not in state:
                raise ValueError(f"state_dict is missing {key!r}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"state_dict has version {state['version']!r}, expected {STATE_VERSION} (or 1)")
        check_int(state["step"], "state_dict['step']", 0)
        check_int(state["num_updates"], "state_dict['num_updates']", 0)
        if not self.same_sigma_rels(state["sigma_rels"]):
            raise ValueError(f"state_dict has sigma_rels {state['sigma_rels']}, this EMA has {self.sigma_rels}")
        self.check_tensors(state["averaged"], state["copied"], "state_dict")

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        """Load a :meth:`state_dict`. Everything is checked first (keys, version, profiles,
        counters, and each tensor's type, shape, dtype, layout and device: a real device, not
        meta; a sharded weight's as a DTensor with its mesh, placements and global shape); on
        any error nothing is changed (ValueError/TypeError)."""
        state = self.upgraded(state)
        self.check_state(state)
        for p, shadows in enumerate(state["averaged"]):
            for name, mine in zip(self._avg_names, self._shadows[p]):
                mine.copy_(local_tensor(shadows[name]))
        for name, mine in zip(self._copy_names, self._copies):
            mine.copy_(local_tensor(state["copied"][name]))
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])

    def snapshot(self, device: Union[None, str, torch.device] = "cpu") -> dict:
        """A copy of the power-function profiles now, for post-hoc EMA: {"t", "step",
        "sigma_rels", "averaged", "copied"} with tensors copied to ``device`` (None: where they
        are). t = step - update_after_step must be >= 1. Sharded weights are snapshotted as this
        rank's local shards (plain tensors; :class:`noisefast.PostHocEMA` keeps them per rank)."""
        if self.sigma_rels is None:
            raise ValueError("snapshot() needs power-function profiles: build the EMA with sigma_rels")
        t = self.power_time()
        if t < 1:
            raise ValueError(f"snapshot() needs at least one averaging update (t = {t})")

        def copy(x: torch.Tensor) -> torch.Tensor:
            return x.detach().to(device=device if device is not None else x.device, copy=True)

        return {
            "t": t,
            "step": self.step,
            "sigma_rels": list(self.sigma_rels),
            "averaged": [{n: copy(s) for n, s in zip(self._avg_names, shadows)} for shadows in self._shadows],
            "copied": {n: copy(c) for n, c in zip(self._copy_names, self._copies)},
        }

    def __repr__(self) -> str:
        profiles = f"sigma_rels={self.sigma_rels}" if self.sigma_rels is not None else \
            f"decay={self.decay}, warmup={self.warmup!r}"
        return (f"EMA({profiles}, averaged={len(self._avg_names)}, copied={len(self._copy_names)}, "
                f"step={self.step})")


def check_state_tensors(given, where: str, names: List[str], ours: List[torch.Tensor], floating: bool,
                        layouts: Optional[List[Optional[ShardLayout]]] = None, local: bool = False) -> None:
    """TypeError/ValueError naming ``where[name]`` unless ``given`` maps exactly ``names`` to dense
    tensors on a real device (not meta) with the shapes of ``ours``, floating (``floating``) or of
    ``ours``' dtypes: what a state's tensors must be for copy_ into ``ours`` to succeed. Where
    ``layouts`` gives a sharded weight's layout, its value must be a DTensor laid out so (its
    local shard is then checked against ``ours``), or with ``local`` also the local shard itself."""
    if not isinstance(given, Mapping):
        raise TypeError(f"{where} must be a dict of tensors, got {type(given).__name__}")
    missing = [n for n in names if n not in given]
    unexpected = [n for n in given if n not in set(names)]
    if missing or unexpected:
        raise ValueError(f"{where}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    for name, mine, layout in zip(names, ours, layouts or [None] * len(names)):
        value = given[name]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{where}[{name!r}] must be a tensor, got {type(value).__name__}")
        if layout is not None and (is_dtensor(value) or not local):
            value = check_sharded_value(value, layout, f"{where}[{name!r}]")
        if value.layout != torch.strided or value.is_quantized:
            raise TypeError(f"{where}[{name!r}] must be a dense (strided) tensor, got {value.layout}")
        if value.device.type == "meta":
            raise ValueError(f"{where}[{name!r}] is a meta tensor (no data)")
        if type(value) not in (torch.Tensor, nn.Parameter):
            raise TypeError(f"{where}[{name!r}] must be a plain torch.Tensor, got {type(value).__name__}")
        if value.shape != mine.shape:
            raise ValueError(f"{where}[{name!r}] has shape {tuple(value.shape)}, expected {tuple(mine.shape)}")
        if floating and not value.is_floating_point():
            raise TypeError(f"{where}[{name!r}] must be a float tensor, got {value.dtype}")
        if not floating and value.dtype != mine.dtype:
            raise TypeError(f"{where}[{name!r}] is {value.dtype}, expected {mine.dtype}")
