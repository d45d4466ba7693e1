"""The mixing pass of mixup: ``mix_rows(x, index, lam) = lam * x + (1 - lam) * x[index]`` in one pass.

The op ``noisefast::mix_rows(x, index, lam)`` blends every row b of x (dim 0) with row index[b]:
``out[b] = lam * x[b] + (1 - lam) * x[index[b]]`` (Zhang et al. 2018, "mixup: Beyond Empirical Risk
Minimization"; docs/formulas.md, "Mixup"). Eager PyTorch needs a gather copy x[index] and then one or
two more passes; the kernels read each row twice and write once, with no temporary.

Its gradient with respect to x is ``lam * g + (1 - lam) * S g`` where S scatters g back by index:
``grad_x[j] = lam * g[j] + (1 - lam) * sum over {b : index[b] = j} of g[b]`` (an index_add; for a
permutation, the one sum term is g[inverse[j]]). lam and index receive no gradient. Autograd saves
index and lam (a few bytes per row), never x.
"""
from __future__ import annotations

import numbers
from typing import Union

import torch

from .._checks import check_float_tensor
from .._dtypes import math_dtype
from .._layout import blocked_layout
from .._library import Kernels
from .._scalars import scalar_on


def _check_index_values(index: torch.Tensor, rows: int) -> None:
    """index values in [0, rows): read on the host for CPU tensors only (a CUDA index would cost a
    device synchronisation; mixup's index comes from randperm and is valid by construction). The
    C++ CPU kernel checks them itself while it reads them."""
    if index.numel() == 0 or index.device.type != "cpu" or KERNELS.backend_for(index.device) == "cpu":
        return
    low, high = int(index.min()), int(index.max())
    if low < 0 or high >= rows:
        bad = low if low < 0 else high
        raise IndexError(f"index holds {bad}, out of range for a batch of {rows} rows")


@torch.library.custom_op("noisefast::mix_rows", mutates_args=())
def mix_rows_op(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    _check_index_values(index, x.shape[0])
    x = blocked_layout(x)
    return KERNELS(x.device, x, index, lam)


@mix_rows_op.register_fake
def _(x, index, lam):
    return torch.empty_like(blocked_layout(x))


KERNELS = Kernels(mix_rows_op, public="mix_rows", reference="noisefast.reference.mix_rows",
                  triton="noisefast.triton.mix_rows")


def _setup_context(ctx, inputs, output):
    x, index, lam = inputs
    ctx.save_for_backward(index, lam)


def _backward(ctx, grad):
    index, lam = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None
    acc = math_dtype(grad.dtype)
    lam64 = lam.reshape(()).to(device=grad.device, dtype=torch.float64)
    g = grad.to(acc)
    grad_x = g * lam64.to(acc)
    grad_x.index_add_(0, index, g * (1.0 - lam64).to(acc))
    return grad_x.to(grad.dtype), None, None


KERNELS.register_autograd(_backward, setup_context=_setup_context)


def mix_rows(x: torch.Tensor, index: torch.Tensor, lam: Union[float, torch.Tensor]) -> torch.Tensor:
    """Blend each row of x with the row ``index`` points to: ``lam * x + (1 - lam) * x[index]``.

    Args:
        x: float32, float16, bfloat16 or float64 tensor [B, *], any layout (a contiguous or
            channels-last x is read in place; other layouts are copied first).
        index: int64 tensor [B] with values in [0, B) on x's device (a permutation for mixup; any
            index works). Values are checked on CPU tensors; on a GPU they are not read (reading
            would synchronise), and an out-of-range value there is undefined behaviour.
        lam: the weight of the row itself, a real number or a one-element float tensor on x's
            device (or a CPU tensor, moved to x's device); a tensor is never read on the host.

    Returns:
        A tensor shaped and typed like x (channels-last stays channels-last, anything else is
        contiguous). Math in float32 (float64 for float64 x): both weights formed in float64 and
        rounded once, the blend rounded once to x's dtype. Gradient flows to x only.

    Source: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization" (ICLR), eq. (1).
    """
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension (dim >= 1), got a 0-d tensor")
    if not isinstance(index, torch.Tensor):
        raise TypeError(f"index must be a torch.Tensor, got {type(index).__name__}")
    if index.dtype != torch.int64 or index.dim() != 1 or index.shape[0] != x.shape[0]:
        raise ValueError(f"index must be an int64 tensor of shape [{x.shape[0]}], got {index.dtype} "
                         f"of shape {tuple(index.shape)}")
    if index.device != x.device:
        raise ValueError(f"index is on {index.device} but x is on {x.device}")
    lam = as_lam_tensor(lam, x.device)
    return KERNELS.call(x, index, lam)


def as_lam_tensor(lam, device: torch.device) -> torch.Tensor:
    """``lam`` as a 0-d float64 tensor on ``device``; a number must lie in [0, 1]."""
    if isinstance(lam, torch.Tensor):
        if not lam.is_floating_point() or lam.numel() != 1:
            raise ValueError(f"lam must be a number or a one-element float tensor, got {lam.dtype} "
                             f"of shape {tuple(lam.shape)}")
        if lam.device != device and lam.device.type != "cpu":
            raise ValueError(f"lam is on {lam.device} but x is on {device}")
        if lam.dim() == 0 and lam.dtype == torch.float64 and lam.device == device and not lam.requires_grad:
            return lam
        lam = lam.detach().reshape(())
        if lam.device != device:  # a CPU tensor: no host-to-device copy
            return scalar_on(lam, device, torch.float64, ())
        return lam.to(torch.float64)
    if isinstance(lam, bool) or not isinstance(lam, numbers.Real):
        raise TypeError(f"lam must be a real number or a tensor, got {type(lam).__name__}")
    if not 0.0 <= float(lam) <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    return torch.full((), float(lam), dtype=torch.float64, device=device)  # a fill: no host-to-device copy
