"""Reference of the EMA update: the eager specification of ``noisefast_C::ema_update_`` and
``noisefast_C::ema_update_multi_``.

One element of the update, for a shadow ``e`` of a weight ``x`` and a decay ``d`` in [0, 1]::

    e <- d * e + (1 - d) * x,   computed as  torch.lerp(e, x, w),  w = 1 - d

with w evaluated in float64 and rounded once to the math type (float32 for float32, float16 and
bfloat16 shadows; float64 for float64 ones), the weight converted exactly to the shadow's dtype
first. torch.lerp is ``e + w * (x - e)`` for w < 0.5 and ``x - (1 - w) * (x - e)`` otherwise, each a
fused multiply-add, which keeps both ends exact (d = 1 leaves e; d = 0 gives x). The C++ and CUDA
kernels (csrc/include/noisefast/ema_update.h) compute exactly this.

Also here, as benchmark baselines: the per-parameter ``mul_/add_`` loop most training scripts
write, and the ``torch._foreach_lerp_`` form.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._dtypes import FLOAT_DTYPES, math_dtype
from .foreach_gaussian_noise import share_memory  # the kernels' rule (csrc/ops/shared_elements.cpp)


def lerp_weight(decay: float, shadow_dtype: torch.dtype) -> float:
    """w = 1 - decay in float64, rounded once to the math type of ``shadow_dtype``."""
    return torch.tensor(1.0 - float(decay), dtype=torch.float64).to(math_dtype(shadow_dtype)).item()


def pairing_supported(shadow_dtype: torch.dtype, weight_dtype: torch.dtype) -> bool:
    """A shadow has its weight's dtype, or is float32 for a float16/bfloat16 weight."""
    if shadow_dtype not in FLOAT_DTYPES or weight_dtype not in FLOAT_DTYPES:
        return False
    return shadow_dtype == weight_dtype or (
        shadow_dtype == torch.float32 and weight_dtype in (torch.float16, torch.bfloat16))


def _shadow_name(multi: bool, p: int, i: int) -> str:
    return f"ema_lists[{p}][{i}]" if multi else f"ema_tensors[{i}]"


def _decay_values(decays: Sequence[float], decay_tensor: Optional[torch.Tensor], multi: bool) -> List[float]:
    name = "decays" if multi else "decay"
    if decay_tensor is not None:
        if decay_tensor.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be a float32 or float64 tensor, got {decay_tensor.dtype}")
        if decay_tensor.dim() != (1 if multi else 0):
            raise ValueError(f"{name} must be a {'1-d' if multi else '0-d'} tensor, got shape "
                             f"{tuple(decay_tensor.shape)}")
        values = decay_tensor.double().reshape(-1).tolist()
    else:
        values = [float(d) for d in decays]
    if not values:
        raise ValueError(f"{name} must hold at least one decay")
    for d in values:
        if not 0.0 <= d <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be in [0, 1], got {d}")
    return values


def check_operands(emas: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], profiles: int,
                   multi: bool) -> None:
    """The kernels' preconditions (csrc/ops/ema_update.cpp, with_ema_operands), same messages."""
    n = len(tensors)
    if len(emas) != profiles * n:
        raise ValueError(f"{'ema_lists' if multi else 'ema_tensors'} holds the wrong number of tensors "
                         f"for {n} tensors and {profiles} decays")
    for i, x in enumerate(tensors):
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}] must be float32, float16, bfloat16 or float64, got {x.dtype}")
        if x.device != tensors[0].device:
            raise ValueError(f"tensors[{i}] is on {x.device} but tensors[0] is on {tensors[0].device}")
        for p in range(profiles):
            e = emas[p * n + i]
            name = _shadow_name(multi, p, i)
            if e.device != x.device:
                raise ValueError(f"{name} is on {e.device} but tensors[{i}] is on {x.device}")
            if e.shape != x.shape:
                raise ValueError(f"{name} has shape {tuple(e.shape)} but tensors[{i}] has shape {tuple(x.shape)}")
            if torch._debug_has_internal_overlap(e) == 1:
                raise ValueError(f"{name} has elements that share memory (e.g. an expanded tensor): "
                                 "it cannot be updated in place")
            if not pairing_supported(e.dtype, x.dtype):
                raise TypeError(f"{name} is {e.dtype} but tensors[{i}] is {x.dtype}: a shadow must have its "
                                "weight's dtype, or be float32 for float16/bfloat16 weights")
            if e.dtype != emas[i].dtype:
                raise ValueError(f"{name} is {e.dtype} but {_shadow_name(multi, 0, i)} is {emas[i].dtype}: "
                                 "the profiles of one tensor must share a dtype")
    live = [k for k, e in enumerate(emas) if e.numel() > 0]
    for a in range(len(live)):
        for b in range(a + 1, len(live)):
            if share_memory(emas[live[a]], emas[live[b]]):
                first, second = (_shadow_name(multi, k // n, k % n) for k in (live[a], live[b]))
                raise ValueError(f"{first} and {second} share memory: their common elements would be updated twice")


def ema_blend_(shadow: torch.Tensor, x: torch.Tensor, decay: float) -> None:
    """One tensor, one profile: ``shadow.lerp_(x, 1 - decay)`` with the weight rounded as above."""
    shadow.lerp_(x.to(shadow.dtype), lerp_weight(decay, shadow.dtype))


def _update(emas, tensors, decays, decay_tensor, multi: bool) -> None:
    values = _decay_values(decays, decay_tensor, multi)
    check_operands(emas, tensors, len(values), multi)
    n = len(tensors)
    for p, decay in enumerate(values):
        for i, x in enumerate(tensors):
            ema_blend_(emas[p * n + i], x, decay)


def ema_update_(ema_tensors: List[torch.Tensor], tensors: List[torch.Tensor], decay: float,
                decay_tensor: Optional[torch.Tensor]) -> None:
    """Kernel-level reference of ``noisefast_C::ema_update_``: every shadow updated in place."""
    _update(ema_tensors, tensors, [decay], decay_tensor, multi=False)


def ema_update_multi_(ema_lists: List[torch.Tensor], tensors: List[torch.Tensor], decays: List[float],
                      decay_tensor: Optional[torch.Tensor]) -> None:
    """Kernel-level reference of ``noisefast_C::ema_update_multi_`` (ema_lists flattened
    profile-major: shadow p of tensor i at p * len(tensors) + i)."""
    if decay_tensor is not None and len(decays):
        raise ValueError("pass decays as floats or as a tensor, not both")
    _update(ema_lists, tensors, decays, decay_tensor, multi=True)


# Baselines (benchmarks/bench_ema_update.py): what users write today.

def ema_update_loop(ema_tensors: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], decay: float) -> None:
    """The per-parameter loop of most training scripts: ``e.mul_(d).add_(x, alpha=1 - d)``.
    Rounds twice per element, so it differs from the lerp form in the last bit."""
    for e, x in zip(ema_tensors, tensors):
        e.mul_(decay).add_(x, alpha=1.0 - decay)


def ema_update_foreach(ema_tensors: List[torch.Tensor], tensors: List[torch.Tensor], decay: float) -> None:
    """``torch._foreach_lerp_`` (one horizontally fused kernel per dtype group on CUDA); weights
    of another dtype than their shadows are converted first, as foreach_lerp requires."""
    ends = [x if x.dtype == e.dtype else x.to(e.dtype) for e, x in zip(ema_tensors, tensors)]
    torch._foreach_lerp_(ema_tensors, ends, 1.0 - decay)
