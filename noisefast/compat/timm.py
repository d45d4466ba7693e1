"""timm's ``ModelEmaV3`` (timm.utils.model_ema, timm 1.0) on noisefast's fused EMA kernel.

Replacing ``from timm.utils import ModelEmaV3`` with ``from noisefast.compat.timm import ModelEmaV3``
is the whole migration: the same constructor, ``update(model, step=None)``, ``set(model)``,
``get_decay``, ``.module`` (the averaged copy of the model, in eval mode, to evaluate or save) and
``forward``; it is an ``nn.Module`` whose ``state_dict`` is timm's (keys ``module.<name>``), so
checkpoints go both ways.

Maths: ``update`` takes decay = ``self.decay`` when ``step`` is None, else
:func:`noisefast.ema_decay` at ``step`` (timm's ``get_decay``: u = max(0, step - update_after_step -
1); 0 at u = 0; ``decay``, or with use_warmup ``1 - (1 + u / warmup_gamma) ** -warmup_power`` clamped
to [min_decay, decay]). Every floating entry of the model's state_dict (parameters and buffers, or
parameters only with ``exclude_buffers``) is averaged, ``ema.lerp_(model, 1 - decay)``, in one
``noisefast::ema_update_multi_`` call per device; the other entries are copied. This is timm's
foreach path bit for bit (torch._foreach_lerp_ rounds the same way).

What differs from timm (docs/migrating.md):

- No stochastic rounding: an EMA holding bfloat16 tensors with ``stochastic_rounding=True`` (timm's
  default) raises ValueError; pass ``dtype=torch.float32`` (float32 EMA of a bfloat16 model, the
  fused kernel reads the bfloat16 weights directly) or ``stochastic_rounding=False`` (round to
  nearest, which stalls at high decay).
- A float32 EMA of a float16/bfloat16 model is a lerp in float32 (timm multiplies and adds there);
  they differ by an ulp of the EMA at most.
- ``foreach`` is accepted and ignored: the update is always one fused pass per device, also with
  ``device=`` (timm then loops over tensors).
- The model's tensors are read in state_dict order straight from its modules (no state_dict hooks),
  about twice as fast as timm's two state_dict() calls per update.
- A weight tied under two names is averaged once per update (timm's foreach lerps it twice).
- The model's state_dict must have the EMA's entries in the same order with the same shapes
  (ValueError otherwise, where timm's zip stops at the shorter one).
"""
from __future__ import annotations

from copy import deepcopy
from typing import List, Optional

import torch
from torch import nn

from .._checks import check_int, check_real
from ..ema import ema_decay
from ..ops.ema_update import check_decay_number
from ._pairs import PairedUpdate, copy_pairs, state_tensors


class ModelEmaV3(nn.Module):
    """Model EMA with timm's ``ModelEmaV3`` interface (parameters and buffers averaged by default).

    Args:
        model: the model to average; ``.module`` is a deep copy of it in eval mode.
        decay: the decay, in [0, 1]; min_decay in [0, decay] (with use_warmup).
        update_after_step: with a ``step``, the first ``update_after_step + 1`` updates copy the model.
        use_warmup, warmup_gamma, warmup_power: the inverse-gamma warm-up (> 0 each).
        device: keep the EMA on this device (each update copies the weights there).
        dtype: keep the EMA's floating tensors in this dtype (e.g. float32 for a bfloat16 model).
        stochastic_rounding: must be False when the EMA holds bfloat16 tensors (see module docs).
        stochastic_rounding_seed: kept for compatibility.
        foreach: accepted for compatibility; the update is always fused.
        exclude_buffers: average parameters only and copy buffers.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, min_decay: float = 0.0, update_after_step: int = 0,
                 use_warmup: bool = False, warmup_gamma: float = 1.0, warmup_power: float = 2 / 3,
                 device: Optional[torch.device] = None, dtype: Optional[torch.dtype] = None,
                 stochastic_rounding: bool = True, stochastic_rounding_seed: int = 0, foreach: bool = True,
                 exclude_buffers: bool = False):
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = check_decay_number(decay, "decay")
        min_decay = check_decay_number(min_decay, "min_decay")
        if min_decay > decay:
            raise ValueError(f"min_decay ({min_decay}) must not exceed decay ({decay})")
        check_int(update_after_step, "update_after_step", 0)
        check_real(warmup_gamma, "warmup_gamma", positive=True)
        check_real(warmup_power, "warmup_power", positive=True)
        for name, flag in (("use_warmup", use_warmup), ("stochastic_rounding", stochastic_rounding),
                           ("foreach", foreach), ("exclude_buffers", exclude_buffers)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(f"dtype must be None or a floating torch.dtype, got {dtype}")
        self.module = deepcopy(model)
        self.module.eval()
        self.decay = decay
        self.min_decay = min_decay
        self.update_after_step = update_after_step
        self.use_warmup = use_warmup
        self.warmup_gamma = warmup_gamma
        self.warmup_power = warmup_power
        self.foreach = foreach
        self.device = device
        self.dtype = dtype
        self.stochastic_rounding = stochastic_rounding
        self.stochastic_rounding_seed = stochastic_rounding_seed
        self.exclude_buffers = exclude_buffers
        if device is not None:
            self.module.to(device=device)
        if dtype is not None:
            self.module.to(dtype=dtype)
        if stochastic_rounding and any(t.dtype == torch.bfloat16 for t in self._ema_tensors()):
            raise ValueError("the EMA holds bfloat16 tensors and stochastic_rounding=True, which noisefast does not "
                             "implement: pass dtype=torch.float32 (a float32 EMA of the bfloat16 model, "
                             "recommended) or stochastic_rounding=False (round to nearest; stalls at high decay)")
        self._update = PairedUpdate(copy_frozen=False)

    def _ema_tensors(self) -> List[torch.Tensor]:
        return state_tensors(self.module)

    def get_decay(self, step: Optional[int] = None) -> float:
        """``decay`` when ``step`` is None, else :func:`noisefast.ema_decay` at ``step``."""
        if step is None:
            return self.decay
        return ema_decay(step, self.decay, warmup="inverse_gamma" if self.use_warmup else None,
                         update_after_step=self.update_after_step, inv_gamma=self.warmup_gamma,
                         power=self.warmup_power, min_decay=self.min_decay)

    @torch.no_grad()
    def update(self, model: nn.Module, step: Optional[int] = None) -> None:
        """Average ``model`` (the model being trained: same architecture, possibly wrapped by
        DDP or torch.compile, whose state_dict lists the same tensors in the same order) into
        ``.module``."""
        decay = self.get_decay(step)
        if self.exclude_buffers:
            self._update(list(self.module.parameters()), list(model.parameters()), decay)
            copy_pairs(list(self.module.buffers()), list(model.buffers()))
        else:
            self._update(self._ema_tensors(), state_tensors(model), decay)

    @torch.no_grad()
    def set(self, model: nn.Module) -> None:
        """Copy ``model``'s state into ``.module`` (every entry, converted to the EMA's dtype and device)."""
        copy_pairs(self._ema_tensors(), state_tensors(model))

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
