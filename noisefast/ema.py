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

What is tracked: floating-point parameters are averaged, except frozen ones (an nn.Parameter
with requires_grad=False), which are copied at every update (as diffusers' EMAModel does); plain
tensors passed in a list are averaged whatever their requires_grad; buffers
(``include_buffers=True``) are copied too, floating or not. Copying, not averaging, floating
buffers is a choice: BatchNorm running statistics are already averages, and EDM2 copies buffers
as well; an average of a step counter or a running variance has no use.

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
from collections.abc import Mapping, Sequence
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ._checks import check_int, check_real
from ._compile import eager_under_compile
from .ops.ema_update import check_decay_number, run_ema_update

Warmup = Union[None, str, Callable[[int], float]]
WARMUPS = ("ramp", "inverse_gamma")
STATE_VERSION = 1

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
    the first update copies the weights), 0 before."""
    return (1.0 - 1.0 / t) ** (gamma + 1.0) if t >= 1 else 0.0


def ema_decay(step: int, decay: float = 0.9999, *, warmup: Warmup = None, update_after_step: int = 0,
              inv_gamma: float = 1.0, power: float = 2.0 / 3.0, min_decay: float = 0.0) -> float:
    """The decay diffusers' EMAModel uses at optimisation step ``step`` (counted from 1).

    u = max(0, step - update_after_step - 1); 0 if u == 0 (copy the weights); otherwise the
    warmup's value clamped to [min_decay, decay]: ``decay`` (warmup=None), ``(1 + u) / (10 + u)``
    ("ramp"), ``1 - (1 + u / inv_gamma) ** -power`` ("inverse_gamma") or ``warmup(u)`` (a
    callable). "ramp" at steps 1, 2, 3, 10, 100, 1000 with decay 0.9999: 0, 0.1818, 0.25,
    0.5263, 0.9174, 0.9911.
    """
    u = max(0, int(step) - update_after_step - 1)
    if u <= 0:
        return 0.0
    if warmup is None:
        value = decay
    elif warmup == "ramp":
        value = (1 + u) / (10 + u)
    elif warmup == "inverse_gamma":
        value = 1 - (1 + u / inv_gamma) ** -power
    else:
        value = float(warmup(u))
    return max(min(value, decay), min_decay)


# --------------------------------------------------------------------------------------------
# The EMA

def _named_tensors(model_or_params) -> Tuple[List[Tuple[str, torch.Tensor]], List[Tuple[str, torch.Tensor]], bool]:
    """(named parameters, named buffers, built from a module)."""
    if isinstance(model_or_params, nn.Module):
        return list(model_or_params.named_parameters()), list(model_or_params.named_buffers()), True
    if isinstance(model_or_params, torch.Tensor) or not isinstance(model_or_params, Iterable):
        raise TypeError("model_or_params must be an nn.Module or an iterable of tensors, got "
                        f"{type(model_or_params).__name__}")
    params = list(model_or_params)
    for i, p in enumerate(params):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"model_or_params[{i}] must be a tensor, got {type(p).__name__}")
    return [(str(i), p) for i, p in enumerate(params)], [], False


class EMA:
    """Exponential moving average(s) of a model's weights.

    Args:
        model_or_params: an ``nn.Module`` (tensors named as in its state_dict) or an iterable of
            tensors (named "0", "1", ...). The EMA keeps references to these tensors.
        decay: the decay of a classic EMA, in [0, 1] (ignored with ``sigma_rels``).
        warmup: None (constant decay), "ramp", "inverse_gamma" or a callable u -> decay (see
            :func:`ema_decay`).
        update_after_step: the first ``update_after_step + 1`` updates copy the weights.
        sigma_rels: relative standard deviations of EDM2 power-function profiles, one shadow
            per value (e.g. ``(0.05, 0.10)``); replaces ``decay`` and ``warmup``.
        include_buffers: also copy the module's buffers at each update.
        dtype: the shadows' dtype: float32 (default; float64 weights keep float64), None (each
            weight's own dtype), or float16/bfloat16/float64 for weights of that dtype only.
        device: where the shadows live (default: each weight's device). ``device="cpu"`` keeps
            a GPU model's EMA in host memory; each update then copies the weights to the host
            (a device-to-host transfer and a synchronisation per step).
        inv_gamma, power, min_decay: parameters of the schedules (see :func:`ema_decay`).

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
        if warmup is not None and warmup not in WARMUPS and not callable(warmup):
            raise ValueError(f"warmup must be None, one of {WARMUPS} or a callable, got {warmup!r}")
        self.warmup = warmup
        self.update_after_step = check_int(update_after_step, "update_after_step", 0)
        self.inv_gamma = check_real(inv_gamma, "inv_gamma", positive=True)
        self.power = check_real(power, "power", positive=True)
        self.min_decay = check_decay_number(min_decay, "min_decay")
        if self.min_decay > self.decay:
            raise ValueError(f"min_decay ({self.min_decay}) must not exceed decay ({self.decay})")
        if sigma_rels is not None:
            if isinstance(sigma_rels, (str, bytes)) or not isinstance(sigma_rels, Iterable) or not list(sigma_rels):
                raise ValueError(f"sigma_rels must be a non-empty sequence of numbers, got {sigma_rels!r}")
            sigma_rels = list(sigma_rels)
            if warmup is not None:
                raise ValueError("warmup does not apply to power-function profiles (sigma_rels)")
            self.sigma_rels: Optional[List[float]] = [float(s) for s in sigma_rels]
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

        params, buffers, self._from_module = _named_tensors(model_or_params)
        if not params and not buffers:
            raise ValueError("model_or_params has no tensors to track")
        self.step = 0
        self.num_updates = 0
        # Averaged tensors: names, the model's tensors, and one shadow per profile.
        self._avg_names: List[str] = []
        self._avg_sources: List[torch.Tensor] = []
        self._shadows: List[List[torch.Tensor]] = [[] for _ in range(self.num_profiles)]
        # Copied tensors: names, the model's tensors, the copies.
        self._copy_names: List[str] = []
        self._copy_sources: List[torch.Tensor] = []
        self._copies: List[torch.Tensor] = []
        tracked = params + (buffers if include_buffers else [])
        with torch.no_grad():
            for index, (name, t) in enumerate(tracked):
                source = t.detach()
                target_device = self.device or source.device
                frozen = isinstance(t, nn.Parameter) and not t.requires_grad
                if index < len(params) and t.is_floating_point() and not frozen:
                    shadow_dtype = self._shadow_dtype(source, name)
                    self._avg_names.append(name)
                    self._avg_sources.append(t)
                    for shadows in self._shadows:
                        shadows.append(source.to(device=target_device, dtype=shadow_dtype, copy=True))
                else:
                    self._copy_names.append(name)
                    self._copy_sources.append(t)
                    self._copies.append(source.to(device=target_device, copy=True))
        self._names = self._avg_names + self._copy_names
        self._stored: Optional[List[torch.Tensor]] = None
        # One fused call per source device: (shadows flattened profile-major, sources).
        self._update_groups = []
        for indices in self._groups(self._avg_sources).values():
            self._update_groups.append(([self._shadows[p][i] for p in range(self.num_profiles) for i in indices],
                                        [self._avg_sources[i] for i in indices]))

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

    def power_time(self, step: Optional[int] = None) -> int:
        """t of the power-function profiles at ``step`` (default: the last update's step):
        step - update_after_step, the number of averaging updates so far."""
        return (self.step if step is None else int(step)) - self.update_after_step

    def decays_at(self, step: int) -> List[float]:
        """The decay of each profile at optimisation step ``step``."""
        if self.gammas is not None:
            t = self.power_time(step)
            return [power_function_decay(t, g) for g in self.gammas]
        return [ema_decay(step, self.decay, warmup=self.warmup, update_after_step=self.update_after_step,
                          inv_gamma=self.inv_gamma, power=self.power, min_decay=self.min_decay)]

    @eager_under_compile
    @torch.no_grad()
    def update(self, step: Optional[int] = None) -> None:
        """Average the current weights into every profile (one fused call per device) and copy
        the copied tensors. ``step``: the optimisation step just taken (default: the previous
        update's step + 1), which sets the decays.

        Inside a torch.compile'd training step this runs eagerly (a graph break), because the step
        count and the decays change at every call and would otherwise recompile the graph each
        step; the update itself is one fused kernel call either way."""
        step = self.step + 1 if step is None else check_int(step, "step", 0)
        decays = self.decays_at(step)
        for shadows, sources in self._update_groups:
            if sources[0].device != shadows[0].device:  # device= keeps the shadows elsewhere
                sources = [s.to(shadows[0].device) for s in sources]
            run_ema_update(shadows, sources, decays, None)
        for copy, source in zip(self._copies, self._copy_sources):
            copy.copy_(source)
        self.step = step
        self.num_updates += 1

    @staticmethod
    def _groups(sources: List[torch.Tensor]) -> Dict[torch.device, List[int]]:
        groups: Dict[torch.device, List[int]] = {}
        for i, s in enumerate(sources):
            groups.setdefault(s.device, []).append(i)
        return groups

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
        """The tensors of ``model`` matching the tracked names (model=None: the tracked ones)."""
        if model is None:
            return self._avg_sources + self._copy_sources
        if isinstance(model, nn.Module):
            found = dict(model.named_parameters())
            found.update(model.named_buffers())
            missing = [n for n in self._names if n not in found]
            if missing:
                raise ValueError(f"model has no tensor named {missing[:5]}{' ...' if len(missing) > 5 else ''}")
            targets = [found[n] for n in self._names]
        else:
            params, _, _ = _named_tensors(model)
            by_name = dict(params)
            if self._from_module or len(params) != len(self._names):
                raise ValueError(f"model must be an nn.Module or the {len(self._names)} tensors the EMA was "
                                 f"built from, in order; got {len(params)} tensors")
            targets = [by_name[n] for n in self._names]
        for name, t, ours in zip(self._names, targets, self._avg_sources + self._copy_sources):
            if t.shape != ours.shape:
                raise ValueError(f"model tensor {name} has shape {tuple(t.shape)}, expected {tuple(ours.shape)}")
        return targets

    @torch.no_grad()
    def copy_to(self, model=None, profile: Union[int, float] = 0) -> None:
        """Write a profile's averages (and the copied tensors) into ``model``: an nn.Module
        (matched by name), the tensors the EMA was built from (in order), or None (the tracked
        tensors themselves). ``profile``: an index, or one of the sigma_rels."""
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
        """The EMA's state: counters, profiles, averages (one {name: tensor} per profile) and
        copies. Tensors are references (as in nn.Module.state_dict); torch.save/torch.load with
        weights_only=True round-trip it."""
        return {
            "version": STATE_VERSION,
            "step": self.step,
            "num_updates": self.num_updates,
            "sigma_rels": list(self.sigma_rels) if self.sigma_rels is not None else None,
            "averaged": [dict(zip(self._avg_names, shadows)) for shadows in self._shadows],
            "copied": dict(zip(self._copy_names, self._copies)),
        }

    def _check_state(self, state) -> None:
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state).__name__}")
        for key in ("version", "step", "num_updates", "sigma_rels", "averaged", "copied"):
            if key not in state:
                raise ValueError(f"state_dict is missing {key!r}")
        if state["version"] != STATE_VERSION:
            raise ValueError(f"state_dict has version {state['version']!r}, expected {STATE_VERSION}")
        check_int(state["step"], "state_dict['step']", 0)
        check_int(state["num_updates"], "state_dict['num_updates']", 0)
        theirs = state["sigma_rels"]
        same_profiles = (theirs is None and self.sigma_rels is None) or (
            theirs is not None and self.sigma_rels is not None and len(theirs) == len(self.sigma_rels)
            and all(math.isclose(a, b, rel_tol=1e-9) for a, b in zip(theirs, self.sigma_rels)))
        if not same_profiles:
            raise ValueError(f"state_dict has sigma_rels {theirs}, this EMA has {self.sigma_rels}")
        averaged = state["averaged"]
        if not isinstance(averaged, Sequence) or len(averaged) != self.num_profiles:
            raise ValueError(f"state_dict['averaged'] must be a list of {self.num_profiles} dicts")
        for p, shadows in enumerate(averaged):
            self._check_tensors(shadows, f"state_dict['averaged'][{p}]", self._avg_names, self._shadows[p], True)
        self._check_tensors(state["copied"], "state_dict['copied']", self._copy_names, self._copies, False)

    @staticmethod
    def _check_tensors(given, where: str, names: List[str], ours: List[torch.Tensor], floating: bool) -> None:
        if not isinstance(given, Mapping):
            raise TypeError(f"{where} must be a dict of tensors, got {type(given).__name__}")
        missing = [n for n in names if n not in given]
        unexpected = [n for n in given if n not in set(names)]
        if missing or unexpected:
            raise ValueError(f"{where}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
        for name, mine in zip(names, ours):
            value = given[name]
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{where}[{name!r}] must be a tensor, got {type(value).__name__}")
            if value.shape != mine.shape:
                raise ValueError(f"{where}[{name!r}] has shape {tuple(value.shape)}, expected {tuple(mine.shape)}")
            if floating and not value.is_floating_point():
                raise TypeError(f"{where}[{name!r}] must be a float tensor, got {value.dtype}")
            if not floating and value.dtype != mine.dtype:
                raise TypeError(f"{where}[{name!r}] is {value.dtype}, expected {mine.dtype}")

    @torch.no_grad()
    def load_state_dict(self, state: Mapping) -> None:
        """Load a :meth:`state_dict`. Everything is checked first (keys, profiles, shapes,
        dtypes); on any error nothing is changed (ValueError/TypeError)."""
        self._check_state(state)
        for p, shadows in enumerate(state["averaged"]):
            for name, mine in zip(self._avg_names, self._shadows[p]):
                mine.copy_(shadows[name])
        for name, mine in zip(self._copy_names, self._copies):
            mine.copy_(state["copied"][name])
        self.step = int(state["step"])
        self.num_updates = int(state["num_updates"])

    def snapshot(self, device: Union[None, str, torch.device] = "cpu") -> dict:
        """A copy of the power-function profiles now, for post-hoc EMA: {"t", "step",
        "sigma_rels", "averaged", "copied"} with tensors copied to ``device`` (None: where they
        are). t = step - update_after_step must be >= 1."""
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
