"""Reference of the consistency-training loss and output parameterisation (the eager specification).

Three kinds of functions live here:

- the specification of the public functions (:func:`pseudo_huber_loss`, :func:`consistency_output`):
  short eager PyTorch, differentiable by autograd, used by the tests as the oracle;
- the kernel-level references, with the arguments of the C++/Triton kernels
  (:func:`pseudo_huber_forward`, :func:`pseudo_huber_backward`, :func:`consistency_output_forward`,
  :func:`consistency_output_backward`): the ``"reference"`` backend and the fallback;
- the two eager styles users write today, the benchmarks' baselines:
  :func:`pseudo_huber_loss_ect` (per sample, locuslab/ect ``training/loss.py``) and
  :func:`pseudo_huber_loss_elementwise` (per element then mean, Kinyugo/consistency_models and the
  diffusers consistency-training example).

Formulas: formulas.md section 2 (iCT, Song & Dhariwal 2023). Math in float32 for 16/32-bit data,
float64 for float64 data, like the kernels.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch

PSEUDO_HUBER_C_FACTOR = 0.00054  # iCT: c = 0.00054 * sqrt(D)


def math_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in for data of ``dtype``."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def default_c(elements_per_sample: int) -> float:
    """iCT's c = 0.00054 * sqrt(D), D = elements per sample (0.02993 for 3x32x32)."""
    return PSEUDO_HUBER_C_FACTOR * math.sqrt(elements_per_sample)


def pseudo_huber_term(s: torch.Tensor, c: float) -> torch.Tensor:
    """sqrt(s + c^2) - c for squared distances s >= 0, as s / (sqrt(s + c^2) + c) (no cancellation
    for s << c^2). s = c = 0 gives 0 and s = inf gives inf, like the kernels."""
    denom = torch.sqrt(s + c * c) + c
    return torch.where((denom > 0) & (s <= torch.finfo(s.dtype).max), s / denom, s)


def _per_sample_view(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype).reshape(t.shape[0], math.prod(t.shape[1:]))


# --- kernel-level references -------------------------------------------------------------------

def pseudo_huber_forward(input: torch.Tensor, target: torch.Tensor, c: float, per_sample: bool) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::pseudo_huber_forward``: the per-sample loss [B]
    in the math dtype. Per sample: term(||input_b - target_b||^2); per element: the mean over the
    sample of term((input_i - target_i)^2) (NaN for a sample with no elements, as torch.mean)."""
    dtype = math_dtype(input.dtype)
    diff = _per_sample_view(input, dtype) - _per_sample_view(target, dtype)
    if per_sample:
        return pseudo_huber_term((diff * diff).sum(dim=1), c)
    return pseudo_huber_term(diff * diff, c).mean(dim=1)


def pseudo_huber_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
                          c: float, per_sample: bool, want_input: bool,
                          want_target: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel-level reference of ``noisefast_C::pseudo_huber_backward``.

    grad and loss are [B] in the math dtype (the incoming gradient of the per-sample loss and the
    loss itself). grad_input_i = grad_b * e_i / root, e = input - target, with root = loss_b + c
    = sqrt(||e_b||^2 + c^2) (per sample) or grad_b / D * e_i / sqrt(e_i^2 + c^2) (per element);
    1/root is taken as 0 where root = 0. grad_target = -grad_input. A gradient not asked for is
    returned as an empty tensor.
    """
    dtype = math_dtype(input.dtype)
    e = _per_sample_view(input, dtype) - _per_sample_view(target, dtype)
    if per_sample:
        k = grad.to(dtype) * _inv_root(loss.to(dtype) + c)
        g = k[:, None] * e
    else:
        elements = e.shape[1]
        g = (grad.to(dtype) / elements)[:, None] * e * _inv_root(torch.sqrt(e * e + c * c))
    g = g.reshape(input.shape)
    empty = input.new_empty((0,))
    grad_input = g.to(input.dtype) if want_input else empty
    grad_target = (-g).to(input.dtype) if want_target else empty
    return grad_input, grad_target


def _inv_root(root: torch.Tensor) -> torch.Tensor:
    return torch.where(root != 0, 1 / root, torch.zeros_like(root))


# --- the specification of the public function --------------------------------------------------

def pseudo_huber_loss(input: torch.Tensor, target: torch.Tensor, *, c: Optional[float] = None,
                      weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                      per_sample: bool = True) -> torch.Tensor:
    """Eager specification of :func:`noisefast.pseudo_huber_loss` (differentiable by autograd).

    d_b = sqrt(||input_b - target_b||^2 + c^2) - c (per_sample=True) or the mean over sample b of
    sqrt((input_i - target_i)^2 + c^2) - c (per_sample=False); c = 0.00054 * sqrt(D) by default;
    times weight_b; then "none" ([B]), "sum" or "mean" over the batch. Computed in the math dtype,
    returned in input's dtype.
    """
    samples = input.shape[0]
    elements = math.prod(input.shape[1:])
    c = default_c(elements) if c is None else float(c)
    loss = pseudo_huber_forward_autograd(input, target, c, per_sample)
    if weight is not None:
        loss = loss * weight.reshape(samples).to(loss.dtype)
    if reduction == "sum":
        loss = loss.sum()
    elif reduction == "mean":
        loss = loss.mean()
    return loss.to(input.dtype)


def pseudo_huber_forward_autograd(input: torch.Tensor, target: torch.Tensor, c: float,
                                  per_sample: bool) -> torch.Tensor:
    """The per-sample loss written with differentiable torch ops, its gradient autograd's (which
    is NaN where s = c = 0; the kernels use the subgradient 0 there)."""
    dtype = math_dtype(input.dtype)
    diff = _per_sample_view(input, dtype) - _per_sample_view(target, dtype)
    if per_sample:
        return pseudo_huber_term((diff * diff).sum(dim=1), c)
    return pseudo_huber_term(diff * diff, c).mean(dim=1)


# --- the public eager styles (benchmark baselines) ---------------------------------------------

def pseudo_huber_loss_ect(input: torch.Tensor, target: torch.Tensor, c: Optional[float] = None) -> torch.Tensor:
    """Per-sample pseudo-Huber as locuslab/ect writes it (training/loss.py, ECMLoss), then the batch
    mean: squared error summed over each sample, sqrt(s + c^2) - c. Computed in input's dtype."""
    c = default_c(math.prod(input.shape[1:])) if c is None else c
    loss = (input - target) ** 2
    loss = torch.sum(loss.reshape(loss.shape[0], -1), dim=-1)
    loss = torch.sqrt(loss + c ** 2) - c
    return loss.mean()


def pseudo_huber_loss_elementwise(input: torch.Tensor, target: torch.Tensor,
                                  c: Optional[float] = None) -> torch.Tensor:
    """Per-element pseudo-Huber then the mean, as Kinyugo/consistency_models and the diffusers
    consistency-training example write it. Computed in input's dtype."""
    c = default_c(math.prod(input.shape[1:])) if c is None else c
    return (torch.sqrt((input - target) ** 2 + c ** 2) - c).mean()


# --- consistency parameterisation --------------------------------------------------------------

def consistency_scalings(sigma, sigma_data: float = 0.5, sigma_min: float = 0.002):
    """(c_skip, c_out, c_in) at noise level sigma (a number or a tensor; iCT, formulas.md section 2):
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
    or [B], returned in raw's dtype."""
    dtype = math_dtype(raw.dtype)
    if isinstance(sigma, torch.Tensor):
        sigma = sigma.to(dtype).reshape(-1)
    c_skip, c_out, _ = consistency_scalings(sigma, sigma_data, sigma_min)
    if isinstance(sigma, torch.Tensor):
        c_skip, c_out = c_skip.reshape(_per_sample_shape(raw)), c_out.reshape(_per_sample_shape(raw))
    return (c_skip * x.to(dtype) + c_out * raw.to(dtype)).to(raw.dtype)


def consistency_output_forward(raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                               sigma_min: float) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::consistency_output``: sigma is [1] or [B] in the
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
