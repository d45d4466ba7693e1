"""diffusers' ``EMAModel`` (diffusers.training_utils, diffusers 0.2x-0.4x) on noisefast's fused EMA kernel.

Replacing ``from diffusers.training_utils import EMAModel`` with
``from noisefast.compat.diffusers import EMAModel`` is the whole migration: the constructor, ``step``,
``copy_to``, ``store``/``restore``, ``to``, ``pin_memory``, ``get_decay``, ``cur_decay_value``,
``optimization_step``, ``shadow_params``, ``state_dict``/``load_state_dict`` (diffusers' keys: a
diffusers checkpoint loads here and ours loads into diffusers) and ``save_pretrained``/
``from_pretrained`` behave as diffusers' do.

Maths: ``step(parameters)`` sets decay = :func:`noisefast.ema_decay` at ``optimization_step`` (diffusers'
``get_decay``: u = max(0, step - update_after_step - 1); 0 at u = 0; ``(1 + u) / (10 + u)``, or
``1 - (1 + u / inv_gamma) ** -power`` with use_ema_warmup; clamped to [min_decay, decay]) and updates
every shadow in one ``noisefast::ema_update_multi_`` call per device: ``shadow.lerp_(param, 1 - decay)``
for parameters that require grad, ``shadow.copy_(param)`` for the others (diffusers' rule, read at each
step). diffusers computes ``shadow - (1 - decay) * (shadow - param)``; the two roundings differ by at
most an ulp of the shadow per step (tests/test_compat_peers.py runs both for 200 optimizer steps).

What differs from diffusers (docs/migrating.md):

- ``dtype=torch.float32`` (keyword, not in diffusers) keeps float32 shadows of float16/bfloat16
  parameters: a bfloat16 shadow stops moving once (1 - decay) * |param - shadow| is under half its
  ulp. The default (None) keeps each parameter's dtype, as diffusers does.
- ``foreach`` is accepted and ignored: the update is always one fused pass.
- Errors instead of silent truncation: ``step``/``copy_to`` with a different number of tensors than
  the EMA holds, or other shapes, raise ValueError; ``load_state_dict`` checks everything (keys'
  types, shadow count and shapes) before changing anything, then copies the loaded shadows into
  this EMA's (keeping their device and dtype) where diffusers replaces its list with the loaded one.
- min_decay must not exceed decay; unknown keyword arguments raise TypeError.
- DeepSpeed ZeRO-3's gathered parameters are not supported (diffusers gathers them around its
  update; here a partitioned parameter's shape does not match its shadow and step raises).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Iterable, List, Optional

import torch
from torch import nn

from .._checks import check_int, check_real
from ..ema import ema_decay
from ..ops.ema_update import check_decay_number
from ._pairs import PairedUpdate

_SHADOW_DTYPES = (None, torch.float32)
_DEPRECATED = ("max_value", "min_value", "device")


def _parameter_list(parameters, name: str) -> List[torch.Tensor]:
    if isinstance(parameters, nn.Module):
        parameters = parameters.parameters()
    if isinstance(parameters, torch.Tensor) or not isinstance(parameters, Iterable):
        raise TypeError(f"{name} must be an iterable of tensors (e.g. model.parameters()), got "
                        f"{type(parameters).__name__}")
    parameters = list(parameters)
    for i, p in enumerate(parameters):
        if not isinstance(p, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a tensor, got {type(p).__name__}")
    return parameters


def _check_settings(decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power, where: str) -> None:
    """TypeError/ValueError naming the setting (``where`` prefixes the name) unless the values are
    ones :func:`noisefast.ema_decay` takes."""
    check_decay_number(decay, f"{where}decay")
    check_decay_number(min_decay, f"{where}min_decay")
    if min_decay > decay:
        raise ValueError(f"{where}min_decay ({min_decay}) must not exceed {where}decay ({decay})")
    check_int(update_after_step, f"{where}update_after_step", 0)
    if not isinstance(use_ema_warmup, bool):
        raise TypeError(f"{where}use_ema_warmup must be a bool, got {type(use_ema_warmup).__name__}")
    check_real(inv_gamma, f"{where}inv_gamma", positive=True)
    check_real(power, f"{where}power", positive=True)


class EMAModel:
    """Exponential moving average of parameters with diffusers' ``EMAModel`` interface.

    Args:
        parameters: the parameters to average (an iterable of tensors; a module is taken as its
            ``parameters()`` and, as in diffusers, then turns ``use_ema_warmup`` on, with a FutureWarning).
        decay: the largest decay, in [0, 1].
        min_decay: the smallest decay, in [0, decay].
        update_after_step: the first ``update_after_step + 1`` steps copy the parameters.
        use_ema_warmup: False: decay ``(1 + u) / (10 + u)``; True: ``1 - (1 + u / inv_gamma) ** -power``.
        inv_gamma, power: the warm-up's parameters (> 0).
        foreach: accepted for compatibility; the update is always fused.
        model_cls, model_config: a diffusers model class and config, for ``save_pretrained``.
        dtype: None (shadows in each parameter's dtype, as diffusers) or torch.float32 (float32
            shadows of float16/bfloat16 parameters; float64 parameters keep float64).
        max_value, min_value, device: diffusers' deprecated names of decay, min_decay and ``to(device)``.

    Shadows: ``shadow_params``, a list of tensors in the parameters' order (float32 [*] or each
    parameter's dtype and shape).
    """

    def __init__(self, parameters, decay: float = 0.9999, min_decay: float = 0.0, update_after_step: int = 0,
                 use_ema_warmup: bool = False, inv_gamma: float = 1.0, power: float = 2 / 3,
                 foreach: bool = False, model_cls: Any = None, model_config: Optional[dict] = None, *,
                 dtype: Optional[torch.dtype] = None, **kwargs):
        unknown = sorted(set(kwargs) - set(_DEPRECATED))
        if unknown:
            raise TypeError(f"EMAModel got unexpected keyword arguments {unknown}")
        if isinstance(parameters, nn.Module):
            warnings.warn("Passing an nn.Module to EMAModel is deprecated in diffusers; pass model.parameters(). "
                          "As in diffusers, use_ema_warmup is set to True.", FutureWarning, stacklevel=2)
            use_ema_warmup = True
        if kwargs.get("max_value") is not None:
            decay = kwargs["max_value"]
        if kwargs.get("min_value") is not None:
            min_decay = kwargs["min_value"]
        _check_settings(decay, min_decay, update_after_step, use_ema_warmup, inv_gamma, power, "")
        if dtype not in _SHADOW_DTYPES:
            raise TypeError(f"dtype must be None or torch.float32, got {dtype}")
        parameters = _parameter_list(parameters, "parameters")
        self.dtype = dtype
        with torch.no_grad():
            self.shadow_params: List[torch.Tensor] = [self._new_shadow(p) for p in parameters]
        if kwargs.get("device") is not None:
            self.to(device=kwargs["device"])
        self.temp_stored_params: Optional[List[torch.Tensor]] = None
        self.decay = float(decay)
        self.min_decay = float(min_decay)
        self.update_after_step = int(update_after_step)
        self.use_ema_warmup = use_ema_warmup
        self.inv_gamma = inv_gamma
        self.power = power
        self.optimization_step = 0
        self.cur_decay_value: Optional[float] = None
        self.foreach = foreach
        self.model_cls = model_cls
        self.model_config = model_config
        self._update = PairedUpdate(copy_frozen=True)

    def _new_shadow(self, p: torch.Tensor) -> torch.Tensor:
        shadow = p.detach().clone()
        if self.dtype is not None and p.dtype in (torch.float16, torch.bfloat16):
            shadow = shadow.to(self.dtype)
        return shadow

    # ----------------------------------------------------------------------------- pretrained

    @classmethod
    def from_pretrained(cls, path, model_cls, foreach: bool = False, **kwargs) -> "EMAModel":
        """The EMA saved by :meth:`save_pretrained` (or diffusers' ``EMAModel.save_pretrained``) in
        ``path``: the model's weights are the shadows, its config holds the EMA's settings.
        ``kwargs``: this class's extra arguments (``dtype``)."""
        _, ema_kwargs = model_cls.from_config(path, return_unused_kwargs=True)
        model = model_cls.from_pretrained(path)
        ema_model = cls(model.parameters(), model_cls=model_cls, model_config=model.config, foreach=foreach, **kwargs)
        ema_model.load_state_dict(ema_kwargs)
        return ema_model

    def save_pretrained(self, path) -> None:
        """Save as diffusers does: a ``model_cls`` model built from ``model_config`` with the shadows
        as its weights and the EMA's settings registered in its config."""
        if self.model_cls is None:
            raise ValueError("`save_pretrained` can only be used if `model_cls` was defined at __init__.")
        if self.model_config is None:
            raise ValueError("`save_pretrained` can only be used if `model_config` was defined at __init__.")
        model = self.model_cls.from_config(self.model_config)
        state_dict = self.state_dict()
        state_dict.pop("shadow_params", None)
        model.register_to_config(**state_dict)
        self.copy_to(model.parameters())
        model.save_pretrained(path)

    # -------------------------------------------------------------------------------- updates

    def get_decay(self, optimization_step: int) -> float:
        """The decay at ``optimization_step`` (counted from 1): :func:`noisefast.ema_decay` with
        warmup "inverse_gamma" (use_ema_warmup) or "ramp"."""
        return ema_decay(optimization_step, self.decay, warmup="inverse_gamma" if self.use_ema_warmup else "ramp",
                         update_after_step=self.update_after_step, inv_gamma=self.inv_gamma, power=self.power,
                         min_decay=self.min_decay)

    @torch.no_grad()
    def step(self, parameters) -> None:
        """One EMA step after an optimizer step: ``parameters`` are the current weights, in the
        order the EMA was built from (e.g. ``unet.parameters()``; a module is taken as its
        parameters). Raises ValueError (before any write) if their number or shapes differ."""
        parameters = _parameter_list(parameters, "parameters")
        decay = self.get_decay(self.optimization_step + 1)
        self._update(self.shadow_params, parameters, decay)
        self.optimization_step += 1
        self.cur_decay_value = decay

    # ------------------------------------------------------------------------------- applying

    def _matching(self, parameters, name: str) -> List[torch.Tensor]:
        parameters = _parameter_list(parameters, name)
        if len(parameters) != len(self.shadow_params):
            raise ValueError(f"{name} has {len(parameters)} tensors, the EMA has {len(self.shadow_params)}")
        for i, (p, s) in enumerate(zip(parameters, self.shadow_params)):
            if p.shape != s.shape:
                raise ValueError(f"{name}[{i}] has shape {tuple(p.shape)}, the EMA's is {tuple(s.shape)}")
        return parameters

    @torch.no_grad()
    def copy_to(self, parameters) -> None:
        """Write the averages into ``parameters`` (in order; converted to their dtype and device)."""
        for p, s in zip(self._matching(parameters, "parameters"), self.shadow_params):
            p.copy_(s)

    def store(self, parameters) -> None:
        """Save copies (on the CPU, as diffusers) of ``parameters`` for :meth:`restore`."""
        self.temp_stored_params = [p.detach().cpu().clone() for p in _parameter_list(parameters, "parameters")]

    @torch.no_grad()
    def restore(self, parameters) -> None:
        """Put back the values saved by :meth:`store` into ``parameters``."""
        if self.temp_stored_params is None:
            raise RuntimeError("This ExponentialMovingAverage has no `store()`ed weights to `restore()`")
        parameters = _parameter_list(parameters, "parameters")
        if len(parameters) != len(self.temp_stored_params):
            raise ValueError(f"parameters has {len(parameters)} tensors, store() saved {len(self.temp_stored_params)}")
        for p, saved in zip(parameters, self.temp_stored_params):
            p.copy_(saved)
        self.temp_stored_params = None

    def to(self, device=None, dtype=None, non_blocking: bool = False) -> None:
        """Move the shadows to ``device``; floating ones converted to ``dtype`` (as diffusers)."""
        self.shadow_params = [
            p.to(device=device, dtype=dtype, non_blocking=non_blocking) if p.is_floating_point()
            else p.to(device=device, non_blocking=non_blocking)
            for p in self.shadow_params]

    def pin_memory(self) -> None:
        """Put the shadows in pinned host memory (for non-blocking copies of an offloaded EMA)."""
        self.shadow_params = [p.pin_memory() for p in self.shadow_params]

    # -------------------------------------------------------------------------- checkpointing

    def state_dict(self) -> dict:
        """diffusers' EMA state: the settings, ``optimization_step`` and ``shadow_params`` (the
        shadow tensors themselves, not copies)."""
        return {
            "decay": self.decay,
            "min_decay": self.min_decay,
            "optimization_step": self.optimization_step,
            "update_after_step": self.update_after_step,
            "use_ema_warmup": self.use_ema_warmup,
            "inv_gamma": self.inv_gamma,
            "power": self.power,
            "shadow_params": self.shadow_params,
        }

    def _check_shadows(self, shadows) -> None:
        if not isinstance(shadows, (list, tuple)):
            raise ValueError(f"state_dict['shadow_params'] must be a list, got {type(shadows).__name__}")
        if len(shadows) != len(self.shadow_params):
            raise ValueError(f"state_dict['shadow_params'] has {len(shadows)} tensors, this EMA has "
                             f"{len(self.shadow_params)}")
        for i, (given, mine) in enumerate(zip(shadows, self.shadow_params)):
            where = f"state_dict['shadow_params'][{i}]"
            if not isinstance(given, torch.Tensor):
                raise ValueError(f"{where} must be a tensor, got {type(given).__name__}")
            if given.layout != torch.strided or given.device.type == "meta":
                raise ValueError(f"{where} must be a dense tensor with data, got {given.layout} on {given.device}")
            if given.shape != mine.shape:
                raise ValueError(f"{where} has shape {tuple(given.shape)}, expected {tuple(mine.shape)}")
            if given.is_floating_point() != mine.is_floating_point() or given.is_complex() != mine.is_complex():
                raise TypeError(f"{where} is {given.dtype}, this EMA's shadow is {mine.dtype}")

    @torch.no_grad()
    def load_state_dict(self, state_dict: Mapping) -> None:
        """Load diffusers' EMA state (this class's or diffusers' ``state_dict()``; a key that is
        missing keeps its value, as in diffusers). Everything is checked first; on an error
        (ValueError/TypeError naming the key) nothing changes. Loaded shadows are copied into this
        EMA's, which keep their device and dtype."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        new = {key: state_dict.get(key, getattr(self, key)) for key in
               ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                "power")}
        _check_settings(new["decay"], new["min_decay"], new["update_after_step"], new["use_ema_warmup"],
                        new["inv_gamma"], new["power"], "state_dict: ")
        check_int(new["optimization_step"], "state_dict: optimization_step", 0)
        shadows = state_dict.get("shadow_params")
        if shadows is not None:
            self._check_shadows(shadows)
            for mine, given in zip(self.shadow_params, shadows):
                mine.copy_(given)
        for key in ("decay", "min_decay"):
            new[key] = float(new[key])
        for key in ("optimization_step", "update_after_step"):
            new[key] = int(new[key])
        for key, value in new.items():
            setattr(self, key, value)

    def __repr__(self) -> str:
        return (f"EMAModel(decay={self.decay}, use_ema_warmup={self.use_ema_warmup}, "
                f"optimization_step={self.optimization_step}, shadows={len(self.shadow_params)}, "
                f"backend=noisefast)")
