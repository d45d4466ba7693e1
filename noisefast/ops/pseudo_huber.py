"""The pseudo-Huber consistency loss, fused: ``pseudo_huber_loss(input, target)``.

Two ops: ``noisefast::pseudo_huber_forward(input, target, c, per_sample) -> loss[B]`` reads input
and target once and returns the per-sample loss in the math dtype (float32, float64 for float64
data); ``noisefast::pseudo_huber_backward`` recomputes the differences from input and target and
writes the gradients in one pass. Autograd saves input, target (already alive in the graph) and
the [B] loss, nothing larger. Weights and the batch reduction act on [B] in the public function.

Layout: a kernel needs each sample to be one dense run of D elements (the order inside a sample
does not matter to a loss), so contiguous and channels-last tensors go in without a copy;
anything else is copied once. ``noisefast._layout.sample_blocked_pair`` arranges that for every
backend.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Tuple

import torch

from .._checks import check_float_tensor, check_nonnegative_number, check_nonnegative_values
from .._dtypes import math_dtype
from .._layout import blocked_layout, sample_blocked_pair
from .._library import Kernels

REDUCTIONS = ("mean", "sum", "none")
C_FACTOR = 0.00054  # iCT (Song & Dhariwal 2023): c = 0.00054 * sqrt(D)


@torch.library.custom_op("noisefast::pseudo_huber_forward", mutates_args=())
def pseudo_huber_forward(input: torch.Tensor, target: torch.Tensor, c: float, per_sample: bool) -> torch.Tensor:
    """Per-sample pseudo-Huber loss [B] in the math dtype (see the module docstring)."""
    input, target = sample_blocked_pair(input, target)
    return FORWARD(input.device, input, target, c, per_sample)


@pseudo_huber_forward.register_fake
def _(input, target, c, per_sample):
    return input.new_empty((input.shape[0],), dtype=math_dtype(input.dtype))


FORWARD = Kernels(pseudo_huber_forward, public="pseudo_huber_loss", reference="noisefast.reference.pseudo_huber",
                  triton="noisefast.triton.pseudo_huber")


@torch.library.custom_op("noisefast::pseudo_huber_backward", mutates_args=())
def pseudo_huber_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
                          c: float, per_sample: bool, want_input: bool,
                          want_target: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """(grad_input, grad_target) from the incoming per-sample gradient ``grad`` [B] and the saved
    per-sample ``loss`` [B] (both in the math dtype); a gradient not wanted comes back empty."""
    input, target = sample_blocked_pair(input, target)
    return BACKWARD(input.device, grad, input, target, loss, c, per_sample, want_input, want_target)


@pseudo_huber_backward.register_fake
def _(grad, input, target, loss, c, per_sample, want_input, want_target):
    layout = blocked_layout(input)
    empty = input.new_empty((0,))
    return (torch.empty_like(layout) if want_input else empty,
            torch.empty_like(layout) if want_target else empty)


BACKWARD = Kernels(pseudo_huber_backward, public="pseudo_huber_loss", reference="noisefast.reference.pseudo_huber",
                   triton="noisefast.triton.pseudo_huber")


# Autograd saves input and target (alive in the graph anyway) and the [B] loss, nothing larger:
# in the per-sample form the backward's 1 / sqrt(||e_b||^2 + c^2) is 1 / (loss_b + c).


def _setup_context(ctx, inputs, output):
    input, target, c, per_sample = inputs
    ctx.c, ctx.per_sample = c, per_sample
    ctx.save_for_backward(input, target, output)


def _backward(ctx, grad):
    input, target, loss = ctx.saved_tensors
    want_input, want_target = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if not (want_input or want_target):
        return None, None, None, None
    grad_input, grad_target = BACKWARD.call(grad.to(loss.dtype).contiguous(), input, target, loss, ctx.c,
                                                    ctx.per_sample, want_input, want_target)
    return (grad_input if want_input else None), (grad_target if want_target else None), None, None


FORWARD.register_autograd(_backward, setup_context=_setup_context)


def _check_weight(weight, input: torch.Tensor) -> torch.Tensor:
    """weight as a [B] tensor: [B] itself, or [B, 1, ..., 1] as per-sample weights often come."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a tensor of shape [B] or None, got {type(weight).__name__}")
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a float tensor, got {weight.dtype}")
    samples = input.shape[0]
    if weight.dim() < 1 or weight.shape[0] != samples or any(s != 1 for s in weight.shape[1:]):
        raise ValueError(f"weight must have shape [B] = [{samples}] (one weight per sample), "
                         f"got {tuple(weight.shape)}")
    if weight.device != input.device:
        raise ValueError(f"weight is on {weight.device} but input is on {input.device}")
    if not torch.compiler.is_compiling():
        check_nonnegative_values(weight.detach(), "weight")
    return weight.reshape(samples)


def pseudo_huber_loss(input: torch.Tensor, target: torch.Tensor, *, c: Optional[float] = None,
                      weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                      per_sample: bool = True) -> torch.Tensor:
    """The pseudo-Huber loss of consistency training, in one pass forward and one pass backward.

    With e = input - target, B = input.shape[0] samples of D = input[0].numel() elements each:

    - ``per_sample=True`` (the paper's metric; locuslab/ect): d_b = sqrt(||e_b||^2 + c^2) - c, the
      norm taken over all D elements of sample b;
    - ``per_sample=False`` (Kinyugo/consistency_models, the diffusers CT example): d_b = mean over
      sample b of sqrt(e_i^2 + c^2) - c.

    Then ``weight_b * d_b`` and the reduction over the batch.

    Args:
        input: [B, ...] float32, float16, bfloat16 or float64, any layout (B = 1 and D = 1 fine).
        target: the same shape and device (the dtype is promoted with input's when it differs).
            Typically the stop-gradient output at the lower noise level; it receives a gradient
            when it requires one.
        c: the pseudo-Huber constant, a number >= 0; default 0.00054 * sqrt(D) (iCT, Song &
            Dhariwal 2023; 0.02993 for 3x32x32). c = 0 gives the L2 norm (per sample) or the
            mean absolute error (per element), with gradient 0 where the difference is 0.
        weight: optional per-sample weights, shape [B] (or [B, 1, ..., 1]), finite and >= 0, e.g.
            iCT's 1 / (sigma_{i+1} - sigma_i); it receives a gradient when it requires one. A CPU
            tensor's values are read on the host (ValueError); a CUDA tensor's, and any under
            torch.compile, are checked on the device by torch._assert_async, without a
            synchronisation (an error at the next synchronisation).
        reduction: "mean" (sum_b weight_b d_b / B), "sum", or "none" (the [B] vector).
        per_sample: which form (above).

    Returns:
        A 0-d tensor ("mean", "sum") or [B] ("none") in input's dtype. Accumulation is in float32
        (float64 for float64 data), and the loss is evaluated as s / (sqrt(s + c^2) + c) with s the
        squared norm (or squared difference), which does not cancel when s << c^2; float16
        differences whose square overflows float16 (|e| > 256) are fine.
        An empty batch gives [] ("none"), 0 ("sum") and NaN ("mean", as torch.mean). A sample
        with D = 0 elements has loss 0 per sample and NaN per element (a mean over nothing).
        NaN in a sample makes that sample's loss NaN, and no other's.

    Raises:
        TypeError: input/target not float tensors, c not a number, weight not a float tensor.
        ValueError: target's or weight's shape or device does not match input, input is 0-d,
            c negative or non-finite, weight negative or non-finite, reduction unknown.
    """
    check_float_tensor(input, "input")
    check_float_tensor(target, "target")
    if input.dim() == 0:
        raise ValueError("input must have a batch dimension: shape [B, ...], got a 0-d tensor")
    if target.shape != input.shape:
        raise ValueError(f"target must have input's shape {tuple(input.shape)}, got {tuple(target.shape)}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if not isinstance(per_sample, bool):
        raise TypeError(f"per_sample must be a bool, got {type(per_sample).__name__}")
    elements = math.prod(input.shape[1:])
    if c is None:
        c = C_FACTOR * math.sqrt(elements)
    elif isinstance(c, numbers.Real) and not isinstance(c, bool):
        c = check_nonnegative_number(c, "c")
    else:
        raise TypeError(f"c must be a number >= 0 or None, got {type(c).__name__}")
    if weight is not None:
        weight = _check_weight(weight, input)
    if target.dtype != input.dtype:
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    loss = FORWARD.call(input, target, float(c), per_sample)
    if weight is not None:
        loss = loss * weight.to(loss.dtype)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.mean()
    return loss.to(input.dtype)
