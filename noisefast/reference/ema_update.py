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

from .._dtypes import math_dtype
from .._list_operands import check_decay_tensor, check_ema_operands, shadow_name
from .foreach_gaussian_noise import share_memory  # the kernels' rule (csrc/ops/shared_elements.cpp)


def lerp_weight(decay: float, shadow_dtype: torch.dtype) -> float:
    """w = 1 - decay in float64, rounded once to the math type of ``shadow_dtype``."""
    return torch.tensor(1.0 - float(decay), dtype=torch.float64).to(math_dtype(shadow_dtype)).item()


def _decay_values(decays: Sequence[float], decay_tensor: Optional[torch.Tensor], multi: bool) -> List[float]:
    name = "decays" if multi else "decay"
    if decay_tensor is not None:
        check_decay_tensor(decay_tensor, multi)
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
                   multi: bool, decay_tensor: Optional[torch.Tensor] = None) -> None:
    """The kernels' preconditions (csrc/ops/ema_update.cpp, with_ema_operands), same messages: the
    metadata checks (noisefast/_list_operands.py), then no shadow sharing an element with another
    shadow, a weight or a decay tensor the kernel reads."""
    check_ema_operands(emas, tensors, profiles, multi)
    n = len(tensors)
    live = [k for k, e in enumerate(emas) if e.numel() > 0]
    for a in range(len(live)):
        for b in range(a + 1, len(live)):
            if share_memory(emas[live[a]], emas[live[b]]):
                first, second = (shadow_name(multi, k // n, k % n) for k in (live[a], live[b]))
                raise ValueError(f"{first} and {second} share memory: their common elements would be updated twice")
    read = [(f"tensors[{i}]", x) for i, x in enumerate(tensors) if x.numel() > 0]
    if decay_tensor is not None and decay_tensor.device.type != "cpu":
        read.append(("decays" if multi else "decay", decay_tensor))
    for k in live:
        for name, x in read:
            if share_memory(emas[k], x):
                raise ValueError(f"{shadow_name(multi, k // n, k % n)} and {name} share memory: "
                                 "a shadow would be read while it is written")


def ema_blend_(shadow: torch.Tensor, x: torch.Tensor, decay: float) -> None:
    """One tensor, one profile: ``shadow.lerp_(x, 1 - decay)`` with the weight rounded as above."""
    shadow.lerp_(x.to(shadow.dtype), lerp_weight(decay, shadow.dtype))


def _update(emas, tensors, decays, decay_tensor, multi: bool) -> None:
    values = _decay_values(decays, decay_tensor, multi)
    check_operands(emas, tensors, len(values), multi, decay_tensor)
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
