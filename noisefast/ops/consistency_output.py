"""The consistency-model parameterisation, fused: ``consistency_output(raw, x, sigma)``.

``f(x, sigma) = c_skip(sigma) * x + c_out(sigma) * raw`` with

    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = sigma_data * (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2)

(Song et al. 2023, "Consistency Models", appendix C; iCT keeps it; docs/formulas.md, "Consistency
parameterisation"). At sigma = sigma_min, c_skip = 1 and c_out = 0 exactly, so f(x, sigma_min) = x:
the boundary condition holds by construction. The op ``noisefast::consistency_output_forward``
reads raw and x once and writes the output once; its backward
(``noisefast::consistency_output_backward``) writes grad_raw = c_out * g and grad_x = c_skip * g in
one pass, and when sigma requires grad also reduces, per sample,
d c_skip/d sigma * sum(g * x) + d c_out/d sigma * sum(g * raw). Autograd saves raw, x and sigma
(alive in the graph anyway), nothing else. Layouts as for the pseudo-Huber loss (noisefast/_layout.py).
"""
from __future__ import annotations

import math
import numbers
from typing import Tuple, Union

import torch

from .._checks import check_float_tensor, check_nonnegative_number, check_nonnegative_values, check_real
from .._dtypes import math_dtype
from .._layout import blocked_layout, like_layout
from .._library import Kernels
from .._scalars import scalar_on


def _kernel_sigma(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return sigma.to(math_dtype(like.dtype)).contiguous()


@torch.library.custom_op("noisefast::consistency_output_forward", mutates_args=())
def consistency_output_forward_op(raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                          sigma_min: float) -> torch.Tensor:
    """c_skip(sigma) * x + c_out(sigma) * raw; sigma is [1] (the whole batch) or [B]."""
    check_nonnegative_values(sigma, "sigma")
    raw = blocked_layout(raw)
    x = like_layout(x, raw)
    return FORWARD(raw.device, raw, x, _kernel_sigma(sigma, raw), sigma_data, sigma_min)


@consistency_output_forward_op.register_fake
def _(raw, x, sigma, sigma_data, sigma_min):
    return torch.empty_like(blocked_layout(raw))


FORWARD = Kernels(consistency_output_forward_op, public="consistency_output",
                  reference="noisefast.reference.consistency_output", triton="noisefast.triton.consistency_output")


@torch.library.custom_op("noisefast::consistency_output_backward", mutates_args=())
def consistency_output_backward_op(grad: torch.Tensor, raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                                   sigma_data: float, sigma_min: float, want_raw: bool, want_x: bool,
                                   want_sigma: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_raw, grad_x, grad_sigma); grad_sigma is [S] in the math dtype; what is not wanted
    comes back empty."""
    raw = blocked_layout(raw)
    x, grad = like_layout(x, raw), like_layout(grad, raw)
    return BACKWARD(raw.device, grad, raw, x, _kernel_sigma(sigma, raw), sigma_data, sigma_min,
                    want_raw, want_x, want_sigma)


@consistency_output_backward_op.register_fake
def _(grad, raw, x, sigma, sigma_data, sigma_min, want_raw, want_x, want_sigma):
    layout = blocked_layout(raw)
    empty = raw.new_empty((0,))
    return (torch.empty_like(layout) if want_raw else empty,
            torch.empty_like(layout) if want_x else empty,
            sigma.new_empty(sigma.shape, dtype=math_dtype(raw.dtype)) if want_sigma else sigma.new_empty((0,)))


BACKWARD = Kernels(consistency_output_backward_op, public="consistency_output",
                   reference="noisefast.reference.consistency_output", triton="noisefast.triton.consistency_output")


def _setup_context(ctx, inputs, output):
    raw, x, sigma, sigma_data, sigma_min = inputs
    ctx.sigma_data, ctx.sigma_min = sigma_data, sigma_min
    ctx.save_for_backward(raw, x, sigma)


def _backward(ctx, grad):
    raw, x, sigma = ctx.saved_tensors
    want_raw, want_x, want_sigma = ctx.needs_input_grad[:3]
    if not (want_raw or want_x or want_sigma):
        return None, None, None, None, None
    grad_raw, grad_x, grad_sigma = BACKWARD.call(
        grad, raw, x, sigma, ctx.sigma_data, ctx.sigma_min, want_raw, want_x, want_sigma)
    return (grad_raw if want_raw else None, grad_x if want_x else None,
            grad_sigma.to(sigma.dtype) if want_sigma else None, None, None)


FORWARD.register_autograd(_backward, setup_context=_setup_context)


def _sigma_tensor(sigma, raw: torch.Tensor) -> torch.Tensor:
    """sigma as a [1] or [B] tensor on raw's device (a number becomes a [1] tensor, no gradient)."""
    samples = raw.shape[0]
    if not isinstance(sigma, torch.Tensor):
        value = check_nonnegative_number(sigma, "sigma")
        return torch.full((1,), value, dtype=math_dtype(raw.dtype), device=raw.device)
    if not sigma.is_floating_point():
        raise TypeError(f"sigma must be a number or a float tensor, got {sigma.dtype}")
    if sigma.numel() == 1 and all(s == 1 for s in sigma.shape):
        flat = sigma.reshape(1)
    elif sigma.dim() >= 1 and sigma.shape[0] == samples and all(s == 1 for s in sigma.shape[1:]):
        flat = sigma.reshape(samples)
    else:
        raise ValueError(f"sigma must be a number, a one-element tensor, or shape [B] = [{samples}] "
                         f"(or [B, 1, ..., 1]), got shape {tuple(sigma.shape)}")
    if flat.device != raw.device:
        if flat.device.type == "cpu" and sigma.dim() == 0:
            flat = scalar_on(sigma, raw.device, sigma.dtype)  # no host-to-device copy
        else:
            raise ValueError(f"sigma is on {sigma.device} but raw is on {raw.device}")
    return flat


def consistency_output(raw: torch.Tensor, x: torch.Tensor, sigma: Union[float, torch.Tensor], *,
                       sigma_data: float = 0.5, sigma_min: float = 0.002) -> torch.Tensor:
    """The consistency function's output from the network's raw output, in one pass.

    ``f(x, sigma) = c_skip(sigma) * x + c_out(sigma) * raw`` with
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2) and
    c_out = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2) (Song et al. 2023, iCT;
    docs/formulas.md). The network itself usually sees ``c_in * x`` with
    c_in = 1 / sqrt(sigma^2 + sigma_data^2): see :func:`consistency_scalings`.

    Args:
        raw: the network output F(c_in x, sigma), [B, ...], float32/float16/bfloat16/float64, any
            layout.
        x: the noisy input at level sigma, raw's shape and device (dtypes are promoted together).
        sigma: the noise level, >= 0: a number, a one-element tensor, or one per sample ([B], or
            [B, 1, ..., 1]); broadcast over each sample's elements. A tensor sigma receives a
            gradient when it requires one.
        sigma_data: the data standard deviation, > 0 (0.5 for images in [-1, 1]).
        sigma_min: the smallest noise level, >= 0; f(x, sigma_min) = x exactly (value for value,
            when sigma equals sigma_min in the math dtype and raw is finite).

    Returns:
        A new tensor of raw's shape in the promoted dtype of raw and x
        (``torch.promote_types(raw.dtype, x.dtype)``: raw's dtype when x has it; sigma's dtype does
        not count), raw's layout when it is contiguous or channels-last; arithmetic in float32
        (float64 for float64 data).

    Raises:
        TypeError: raw/x/sigma of a wrong type. ValueError: shapes or devices that do not match,
        sigma negative or non-finite (a CPU tensor's values are read on the host; a CUDA tensor's,
        and any under torch.compile, are checked on the device by torch._assert_async: an error at
        the next synchronisation, a device-side assertion on CUDA), sigma_data <= 0, sigma_min < 0.
    """
    check_float_tensor(raw, "raw")
    check_float_tensor(x, "x")
    if raw.dim() == 0:
        raise ValueError("raw must have a batch dimension: shape [B, ...], got a 0-d tensor")
    if x.shape != raw.shape:
        raise ValueError(f"x must have raw's shape {tuple(raw.shape)}, got {tuple(x.shape)}")
    if x.device != raw.device:
        raise ValueError(f"x is on {x.device} but raw is on {raw.device}")
    sigma_data = check_real(sigma_data, "sigma_data", positive=True)
    sigma_min = check_real(sigma_min, "sigma_min", nonnegative=True)
    sigma = _sigma_tensor(sigma, raw)
    if x.dtype != raw.dtype:
        common = torch.promote_types(raw.dtype, x.dtype)
        raw, x = raw.to(common), x.to(common)
    return FORWARD.call(raw, x, sigma, sigma_data, sigma_min)


def consistency_scalings(sigma: Union[float, torch.Tensor], sigma_data: float = 0.5,
                         sigma_min: float = 0.002) -> Tuple:
    """(c_skip, c_out, c_in) of the consistency parameterisation at noise level ``sigma``.

    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2),
    c_out = sigma_data (sigma - sigma_min) / sqrt(sigma^2 + sigma_data^2),
    c_in = 1 / sqrt(sigma^2 + sigma_data^2) (Song et al. 2023; iCT). Eager and tiny: for a model's
    input scaling (``net(c_in * x, sigma)``) or custom parameterisations. Floats for a number
    sigma, tensors (sigma's shape and dtype, differentiable) for a tensor sigma.

    Raises:
        TypeError: sigma not a number or a float tensor. ValueError: sigma negative or non-finite
        (as :func:`consistency_output`: a CPU tensor is read on the host, a CUDA tensor checked on
        the device), sigma_data <= 0, sigma_min < 0.
    """
    sigma_data = check_real(sigma_data, "sigma_data", positive=True)
    sigma_min = check_real(sigma_min, "sigma_min", nonnegative=True)
    if isinstance(sigma, torch.Tensor):
        if not sigma.is_floating_point():
            raise TypeError(f"sigma must be a number or a float tensor, got {sigma.dtype}")
        if not torch.compiler.is_compiling():
            check_nonnegative_values(sigma.detach(), "sigma")
        sqrt = torch.sqrt
    elif isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"sigma must be a number or a float tensor, got {type(sigma).__name__}")
    else:
        sigma = check_nonnegative_number(sigma, "sigma")
        sqrt = math.sqrt
    data2 = sigma_data * sigma_data
    shifted = sigma - sigma_min
    norm = sqrt(sigma * sigma + data2)
    denominator = shifted * shifted + data2
    numerator = torch.full_like(denominator, data2) if isinstance(denominator, torch.Tensor) else data2
    # (number / tensor is reciprocal(tensor) * number: two roundings, and c_skip(sigma_min) != 1)
    return numerator / denominator, sigma_data * shifted / norm, 1 / norm
