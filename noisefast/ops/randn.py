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


WORD_KERNELS = Kernels(
    "philox_words",
    reference="noisefast.reference.random:philox_words_out",
    compiled="philox_words_out",
    triton="noisefast.triton.randn:philox_words_out",
    gpu_preference=("triton",),
)


@torch.library.custom_op("noisefast::philox_words_out", mutates_args=("out",))
def philox_words_out(out: torch.Tensor, seed: torch.Tensor, stream: int, first_block: int) -> None:
    """Fill int64 ``out`` [rows, 4] with the Philox words of blocks first_block.. (for tests)."""
    if out.dtype != torch.int64 or out.dim() != 2 or out.shape[1] != 4 or not out.is_contiguous():
        raise ValueError("philox_words_out: out must be a contiguous int64 tensor of shape [rows, 4]")
    WORD_KERNELS(out.device, out, seed, stream, first_block)


@philox_words_out.register_fake
def _(out, seed, stream, first_block):
    return None
