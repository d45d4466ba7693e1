"""Reference of ``mix_rows``, mixup's mixing pass: the eager specification.

``mix_rows`` is the kernel-level reference of ``noisefast_C::mix_rows`` (same arguments as the C++
and Triton kernels); ``mixup_inputs`` is the textbook eager formula users write, the benchmarks'
"eager" baseline.
"""
from __future__ import annotations

import torch

from .._dtypes import math_dtype


def mix_rows(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::mix_rows``.

    out[b] = lam * x[b] + (1 - lam) * x[index[b]] along dim 0. The weights lam and 1 - lam are
    formed in float64 and each rounded once to the math dtype (float32; float64 for float64 x),
    the blend is computed in the math dtype and rounded once to x's dtype
    (csrc/include/noisefast/mix_rows.h). The output takes x's strides (the kernels receive a
    contiguous or channels-last x and keep its layout).
    """
    acc = math_dtype(x.dtype)
    lam64 = lam.reshape(()).to(device=x.device, dtype=torch.float64)
    w_self, w_partner = lam64.to(acc), (1.0 - lam64).to(acc)
    xa = x.to(acc)
    out = w_self * xa + w_partner * xa[index]
    return torch.empty_like(x).copy_(out)


def mixup_inputs(x: torch.Tensor, index: torch.Tensor, lam: float) -> torch.Tensor:
    """The eager mixup of Zhang et al. 2018 as users write it: ``lam * x + (1 - lam) * x[index]``
    (facebookresearch/mixup-cifar10, train.py, mixup_data), in x's dtype."""
    return lam * x + (1 - lam) * x[index, :]
