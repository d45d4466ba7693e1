"""Scalars given as 0-d CPU tensors, placed on the data's device without a host-to-device copy.

``t.to("cuda")`` copies from host memory: a synchronising copy on every call, and one that CUDA-graph
capture refuses. torch's own ops treat a 0-d CPU tensor operand as a scalar instead: its value is
read on the host and passed to the kernel as an argument (under capture the value at capture time
is recorded, as for a Python number). :func:`scalar_on` builds the device tensor that way and stays
differentiable: a 0-d CPU tensor that requires grad gets its gradient back on the CPU.
"""
from __future__ import annotations

from typing import Sequence

import torch


def scalar_on(value: torch.Tensor, device: torch.device, dtype: torch.dtype,
              shape: Sequence[int] = (1,)) -> torch.Tensor:
    """The 0-d CPU tensor ``value`` as a tensor of ``shape`` on ``device`` in ``dtype``: a fill of
    zeros plus the value, which torch reads on the host (value rounded to dtype once, as by .to)."""
    return torch.zeros(tuple(shape), dtype=dtype, device=device).add_(value)
