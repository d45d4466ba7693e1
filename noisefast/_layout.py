"""Sample-blocked layouts: how the per-sample kernels (pseudo_huber, consistency_output, mix_rows)
take their tensors.

A kernel that works sample by sample needs each sample (index of dim 0) to be one dense run of D
elements at b * D from the data pointer; the order inside a sample does not matter to it (a loss,
a per-sample scaling, a row blend). Contiguous and channels-last tensors are laid out like that and
go in without a copy; anything else is copied once. Two tensors read together must also have equal
strides, so that one linear walk over memory pairs up the same logical elements. The C++ kernels
check the same two properties (csrc/ops/torch_checks.h: sample_blocked, same_layout).
"""
from __future__ import annotations

from typing import Tuple

import torch


def is_sample_blocked(t: torch.Tensor) -> bool:
    """Whether sample b of ``t`` occupies memory [b*D, (b+1)*D) from t's data pointer, densely.

    Non-overlapping and dense: the strides, sorted, are the running products of the sizes (size-1
    dimensions do not count); the sample dimension then has the largest stride, D.
    """
    if t.numel() == 0:
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(t.shape, t.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return t.shape[0] == 1 or t.stride(0) == t.numel() // t.shape[0]


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b have equal strides in every dimension of size > 1."""
    return all(sa == sb for sz, sa, sb in zip(a.shape, a.stride(), b.stride()) if sz > 1)


def blocked_layout(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it is sample-blocked, else a contiguous copy."""
    return t if t.is_contiguous() or is_sample_blocked(t) else t.contiguous()


def like_layout(t: torch.Tensor, layout: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides of the sample-blocked tensor ``layout`` (a copy only when they differ)."""
    if (t.is_contiguous() and layout.is_contiguous()) or (is_sample_blocked(t) and same_layout(t, layout)):
        return t
    return torch.empty_like(layout).copy_(t)


def sample_blocked_pair(first: torch.Tensor, second: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(first, second) rearranged for a per-sample kernel: both sample-blocked with equal strides."""
    first = blocked_layout(first)
    return first, like_layout(second, first)
