"""Reference of the consistency-model output parameterisation (the eager specification).

- :func:`consistency_output`: the specification of the public function, differentiable by autograd,
  used by the tests as the oracle;
- :func:`consistency_output_forward`, :func:`consistency_output_backward`: the kernel-level
  references, with the arguments of the C++/Triton kernels (the ``"reference"`` backend);
- :func:`consistency_scalings`, :func:`consistency_scalings_grad`: the scalings and their
  derivatives, the specification of ``noisefast.consistency_scalings``;
- :func:`consistency_output_eager`: the parameterisation as public consistency-model code writes
  it, the benchmarks' "eager" baseline.

Formulas: docs/formulas.md, "Consistency parameterisation" (Song et al. 2023; iCT). Math in
float32 for 16/32-bit data, float64 for float64 data, like the kernels.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

from .._dtypes import math_dtype


def consistency_scalings(sigma, sigma_data: float = 0.5, sigma_min: float = 0.002):
    """(c_skip, c_out, c_in) at noise level sigma, a number or a tensor (iCT; docs/formulas.md):
    c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2), c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2),
    c_in = 1 / sqrt(sigma^2 + sd^2). At sigma = sigma_min, c_skip = 1 and c_out = 0 exactly."""
    sqrt = torch.sqrt if isinstance(sigma, torch.Tensor) else math.sqrt
    shifted = sigma - sigma_min
    norm = sqrt(sigma * sigma + sigma_data * sigma_data)
    numerator = sigma_data * sigma_data
    denominator = shifted * shifted + numerator
    if isinstance(denominator, torch.Tensor):  # number / tensor is reciprocal(tensor) * number: two roundings
        numerator = torch.full_like(denominator, numerator)
    return numerator / denominator, sigma_data * shifted / norm, 1 / norm


def consistency_scalings_grad(sigma: torch.Tensor, sigma_data: float, sigma_min: float):
    """(d c_skip / d sigma, d c_out / d sigma) = (-2 sd^2 (sigma - sigma_min) / ((sigma - sigma_min)^2 + sd^2)^2,
    sd (sd^2 + sigma_min sigma) / (sigma^2 + sd^2)^1.5)."""
    shifted = sigma - sigma_min
    skip_denom = shifted * shifted + sigma_data * sigma_data
    norm2 = sigma * sigma + sigma_data * sigma_data
    return (-2 * sigma_data * sigma_data * shifted / (skip_denom * skip_denom),
            sigma_data * (sigma_data * sigma_data + sigma_min * sigma) / (norm2 * torch.sqrt(norm2)))


def _per_sample_shape(t: torch.Tensor) -> Tuple[int, ...]:
    return (-1,) + (1,) * (t.dim() - 1)


def consistency_output(raw: torch.Tensor, x: torch.Tensor, sigma, *, sigma_data: float = 0.5,
                       sigma_min: float = 0.002) -> torch.Tensor:
    """Eager specification of :func:`noisefast.consistency_output` (differentiable by autograd):
    c_skip(sigma) * x + c_out(sigma) * raw in the math dtype, sigma a number, a one-element tensor
    or [B], returned in the promoted dtype of raw and x."""
    common = torch.promote_types(raw.dtype, x.dtype)
    dtype = math_dtype(common)
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(dtype).reshape(-1)
    c_skip, c_out, _ = consistency_scalings(sigma, sigma_data, sigma_min)
    if isinstance(sigma, torch.Tensor):
        c_skip, c_out = c_skip.reshape(_per_sample_shape(raw)), c_out.reshape(_per_sample_shape(raw))
    return (c_skip * x.to(dtype) + c_out * raw.to(dtype)).to(common)


def consistency_output_forward(raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                               sigma_min: float) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::consistency_output_forward``: sigma is [1] or [B] in the
    math dtype; the output has raw's layout."""
    out = consistency_output(raw, x, sigma, sigma_data=sigma_data, sigma_min=sigma_min)
    return torch.empty_like(raw).copy_(out)


def consistency_output_backward(grad: torch.Tensor, raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor,
                                sigma_data: float, sigma_min: float, want_raw: bool, want_x: bool,
                                want_sigma: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kernel-level reference of ``noisefast_C::consistency_output_backward``.

    grad_raw = c_out g, grad_x = c_skip g, and grad_sigma_b = c_skip'(sigma_b) sum_i g_i x_i +
    c_out'(sigma_b) sum_i g_i raw_i (summed over the batch when sigma is [1]), in the math dtype.
    What is not wanted comes back empty.
    """
    dtype = math_dtype(raw.dtype)
    samples = raw.shape[0]
    g = grad.to(dtype)
    c_skip, c_out, _ = consistency_scalings(sigma, sigma_data, sigma_min)
    shape = _per_sample_shape(raw)
    empty = raw.new_empty((0,))
    grad_raw = torch.empty_like(raw).copy_(c_out.reshape(shape) * g) if want_raw else empty
    grad_x = torch.empty_like(raw).copy_(c_skip.reshape(shape) * g) if want_x else empty
    grad_sigma = sigma.new_empty((0,))
    if want_sigma:
        d_skip, d_out = consistency_scalings_grad(sigma, sigma_data, sigma_min)
        sum_gx = (g * x.to(dtype)).reshape(samples, math.prod(raw.shape[1:])).sum(dim=1)
        sum_graw = (g * raw.to(dtype)).reshape(samples, math.prod(raw.shape[1:])).sum(dim=1)
        grad_sigma = d_skip * sum_gx + d_out * sum_graw
        if sigma.numel() == 1:
            grad_sigma = grad_sigma.sum().reshape(1)
    return grad_raw, grad_x, grad_sigma


# --- the public eager style (benchmark baseline) -----------------------------------------------

def consistency_output_eager(raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float = 0.5,
                             sigma_min: float = 0.002) -> torch.Tensor:
    """openai/consistency_models' ``denoise`` (cm/karras_diffusion.py): the scalings of each sample's
    sigma broadcast over its elements, ``c_out * raw + c_skip * x``, in the data's dtype."""
    shape = _per_sample_shape(raw)
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5
    return c_out.view(shape) * raw + c_skip.view(shape) * x
