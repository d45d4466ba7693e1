"""Workarounds for the Triton interpreter (TRITON_INTERPRET=1), used only when it is active.

The interpreter converts float32 to bfloat16 wrongly (it does not round to nearest even, with or
without fp_downcast_rounding="rtne"), while compiled Triton on a GPU rounds correctly. So that
tests on machines without a GPU check the kernels' arithmetic rather than that defect, a bfloat16
output is written by the kernel as float32 and rounded by torch.
"""
import os

import torch

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernel_output(out: torch.Tensor) -> torch.Tensor:
    """The tensor the kernel should write for ``out``: out itself, or a float32 stand-in."""
    if INTERPRETING and out.dtype == torch.bfloat16:
        return torch.empty(out.shape, dtype=torch.float32, device=out.device)
    return out


def finish_output(out: torch.Tensor, written: torch.Tensor) -> torch.Tensor:
    """Round a float32 stand-in into ``out``; returns out."""
    if written is not out:
        out.copy_(written)
    return out
