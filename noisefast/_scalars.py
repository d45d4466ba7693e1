"""Scalars given as 0-d CPU tensors, placed on the data's device without a host-to-device copy.

``t.to("cuda")`` copies from host memory: a synchronising copy on every call, and one that CUDA-graph
capture refuses. torch's own ops treat a 0-d CPU tensor operand as a scalar instead: its value is
read on the host and passed to the kernel as an argument (under capture the value at capture time
is recorded, as for a Python number). :func:`scalar_on` builds the device tensor that way and stays
differentiable: a 0-d CPU tensor that requires grad gets its gradient back on the CPU.
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import torch

from ._library import runs_eagerly


def scalar_on(value: torch.Tensor, device: torch.device, dtype: torch.dtype,
              shape: Sequence[int] = (1,)) -> torch.Tensor:
    """The 0-d CPU tensor ``value`` as a tensor of ``shape`` on ``device`` in ``dtype``: a fill of
    zeros plus the value, which torch reads on the host (value rounded to dtype once, as by .to)."""
    return torch.zeros(tuple(shape), dtype=dtype, device=device).add_(value)


# Constant vectors handed to kernels as read-only operands, by (value, length, dtype, device).
_CONSTANTS: Dict[Tuple[float, float, int, torch.dtype, torch.device], torch.Tensor] = {}
_MAX_CONSTANTS = 64


def constant_vector(value: float, count: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.full((count,), value, dtype=dtype, device=device)``, made once per (value, count,
    dtype, device) in eager mode and shared (a kernel operand that nothing writes: a per-sample
    alpha of 1.0, say); each call pays a dictionary lookup instead of an allocation and a fill
    (~1.5 us). Traced by torch.compile or under a dispatch mode, a fresh tensor as before. The
    result must never be written."""
    if not runs_eagerly():
        return torch.full((count,), value, dtype=dtype, device=device)
    key = (value, math.copysign(1.0, value), count, dtype, device)  # (0.0 == -0.0 as keys: the sign kept apart)
    t = _CONSTANTS.get(key)
    if t is None:
        if len(_CONSTANTS) >= _MAX_CONSTANTS:
            _CONSTANTS.clear()
        t = _CONSTANTS[key] = torch.full((count,), value, dtype=dtype, device=device)
    return t
