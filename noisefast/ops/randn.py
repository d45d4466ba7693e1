"""The op ``noisefast::randn_out``: fill a tensor from the portable normal stream.

The pattern every noisefast op follows: a ``torch.library.custom_op`` (schema inferred from the
annotations), a fake kernel for tracing, autograd where there is a gradient, and an implementation
that hands the call to the backend ``_library`` chooses.
"""
from __future__ import annotations

import torch

from .._library import Kernels

KERNELS = Kernels(
    "randn",
    reference="noisefast.reference.random:randn_out",
    compiled="randn_out",
    triton="noisefast.triton.randn:randn_out",
)


@torch.library.custom_op("noisefast::randn_out", mutates_args=("out",))
def randn_out(out: torch.Tensor, seed: torch.Tensor, stream: int, offset: int) -> None:
    """Fill contiguous ``out`` with elements offset .. offset+numel-1 of stream ``stream`` under
    the seed in ``seed`` (int64, one element, on out's device)."""
    if not out.is_contiguous():
        raise ValueError("randn_out: out must be contiguous")
    KERNELS(out.device, out, seed, stream, offset)


@randn_out.register_fake
def _(out, seed, stream, offset):
    return None
