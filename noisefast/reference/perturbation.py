"""Reference of the perturbation ops: the eager specification of their kernels, and the eager code
that public training scripts write (the benchmarks' "eager" baseline).

Kernel-level references take the kernels' arguments:

- per-sample values (sigma, sigma_next, alpha) are 1-D tensors of the math dtype (float32, or
  float64 for float64 x) of length P; element i of x (row-major) uses entry ``i // inner``
  (P = 1 and inner = numel for a scalar);
- element i of x draws element ``offset + i`` of its normal streams (the public ops pass 0;
  tests use large offsets to exercise 64-bit stream positions);
- math in float32 (float64 for float64 x) in the kernels' order of operations, result rounded to
  x's dtype.

Formulas: docs/formulas.md, "iCT" (consistency pairs) and "Input perturbation and offset noise"
(DDPM-IP, offset noise); noise from the portable stream (docs/design.md).
"""
from __future__ import annotations

from typing import List, Tuple

import torch

from .._dtypes import math_dtype
from ..random import STREAM_LEVELS, STREAM_NOISE, STREAM_OFFSET, STREAM_PERTURBATION
from .philox import normal_stream, uniform_stream


def _seed(seed: torch.Tensor) -> int:
    return int(seed.reshape(()).item())


def _per_element(values: torch.Tensor, numel: int, inner: int, dtype: torch.dtype) -> torch.Tensor:
    index = torch.arange(numel, device=values.device) // max(inner, 1)
    return values.reshape(-1).to(dtype)[index]


def consistency_pair(x: torch.Tensor, seed: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                     inner: int, offset: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel-level reference of ``noisefast_C::consistency_pair``.

    x_cur[i] = x[i] + sigma[i // inner] * z[i], x_next[i] = x[i] + sigma_next[i // inner] * z[i],
    one z (stream STREAM_NOISE, elements offset ..). Returns contiguous tensors shaped like x.
    """
    acc = math_dtype(x.dtype)
    n = x.numel()
    z = normal_stream(n, _seed(seed), STREAM_NOISE, offset, device=x.device).to(acc)
    xs = x.reshape(-1).to(acc)
    x_cur = xs + _per_element(sigma, n, inner, acc) * z
    x_next = xs + _per_element(sigma_next, n, inner, acc) * z
    return x_cur.to(x.dtype).view(x.shape), x_next.to(x.dtype).view(x.shape)


def _add_noise_noise(n: int, seed: int, input_perturbation: float, offset_noise: float, channel_inner: int,
                     offset: int, acc: torch.dtype, device) -> Tuple[torch.Tensor, torch.Tensor]:
    """(eps, noise) of add_noise's n elements in the math dtype acc: eps = z + offset_noise * o,
    noise = eps + input_perturbation * xi (what sigma multiplies)."""
    eps = normal_stream(n, seed, STREAM_NOISE, offset, device=device).to(acc)
    if offset_noise != 0.0 and n > 0:
        channels = (n - 1) // channel_inner + 1
        o = normal_stream(channels, seed, STREAM_OFFSET, 0, device=device)
        eps = eps + torch.tensor(offset_noise, dtype=acc) * _per_element(o, n, channel_inner, acc)
    noise = eps
    if input_perturbation != 0.0:
        xi = normal_stream(n, seed, STREAM_PERTURBATION, offset, device=device).to(acc)
        noise = eps + torch.tensor(input_perturbation, dtype=acc) * xi
    return eps, noise


def add_noise(x: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
              input_perturbation: float, offset_noise: float, sample_inner: int, channel_inner: int,
              offset: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Kernel-level reference of ``noisefast_C::add_noise``.

    eps[i] = z[i] + offset_noise * o[i // channel_inner]    (o: stream STREAM_OFFSET, elements 0 ..;
                                                              the term is absent when offset_noise == 0)
    x_noisy[i] = alpha[p] * x[i] + sigma[p] * (eps[i] + input_perturbation * xi[i]),  p = i // sample_inner
                                                             (xi: stream STREAM_PERTURBATION; the term is
                                                              absent when input_perturbation == 0)
    target = eps. z and xi use stream elements offset + i.
    """
    acc = math_dtype(x.dtype)
    n = x.numel()
    eps, noise = _add_noise_noise(n, _seed(seed), input_perturbation, offset_noise, channel_inner, offset, acc,
                                  x.device)
    x_noisy = (_per_element(alpha, n, sample_inner, acc) * x.reshape(-1).to(acc)
               + _per_element(sigma, n, sample_inner, acc) * noise)
    return x_noisy.to(x.dtype).view(x.shape), eps.to(x.dtype).view(x.shape)


def perturbation_noise_grad(grads: List[torch.Tensor], seed: torch.Tensor, input_perturbation: float,
                            offset_noise: float, count: int, sample_inner: int, channel_inner: int,
                            offset: int) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::perturbation_noise_grad``, the gradient of
    :func:`add_noise` (and of :func:`consistency_pair`: both scales 0) with respect to sigma.

    out[k, p] = sum over i with i // sample_inner == p of grads[k][i] * noise[i], noise as in
    :func:`add_noise` (eps + input_perturbation * xi); [len(grads), count] in the math dtype.
    """
    acc = math_dtype(grads[0].dtype)
    n = grads[0].numel()
    _, noise = _add_noise_noise(n, _seed(seed), input_perturbation, offset_noise, channel_inner, offset, acc,
                                grads[0].device)
    sample = torch.arange(n, device=noise.device) // sample_inner
    out = torch.zeros(len(grads), count, dtype=acc, device=noise.device)
    for k, g in enumerate(grads):
        out[k].index_add_(0, sample, g.reshape(-1).to(acc) * noise)
    return out


def inverse_cdf_index(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The smallest i with u < cdf[i] (float64 comparison), clamped to len(cdf) - 1; int64.

    The level-sampling rule of csrc/include/noisefast/levels.h and noisefast/triton/levels.py.
    """
    cdf = cdf.to(torch.float64).contiguous()
    index = torch.searchsorted(cdf, u.to(torch.float64).contiguous(), right=True)
    return index.clamp_(max=cdf.numel() - 1)


def sample_levels(seed: int, batch: int, sigmas: torch.Tensor, cdf: torch.Tensor):
    """(index, sigma, sigma_next, weight) of samples 0 .. batch-1: u_b = element b of the uniform
    stream STREAM_LEVELS; index by inverse CDF; sigma pair from the float64 levels, as float32;
    weight = 1 / (sigma_{i+1} - sigma_i) formed in float64, as float32."""
    u = uniform_stream(batch, seed, STREAM_LEVELS, 0, device=cdf.device)
    index = inverse_cdf_index(cdf, u)
    levels = sigmas.to(torch.float64)
    lo, hi = levels[index], levels[index + 1]
    return index, lo.to(torch.float32), hi.to(torch.float32), (1.0 / (hi - lo)).to(torch.float32)


def sampled_consistency_pair(x: torch.Tensor, seed: torch.Tensor, sigmas: torch.Tensor, cdf: torch.Tensor,
                             offset: int):
    """Kernel-level reference of ``noisefast_C::sampled_consistency_pair``: levels of the x.shape[0]
    samples by inverse CDF (:func:`sample_levels`), then :func:`consistency_pair` with them.

    Returns (x_cur, x_next, sigma [B] float32, sigma_next [B] float32, weight [B] float32, index [B] int64).
    """
    batch = x.shape[0]
    index, sigma, sigma_next, weight = sample_levels(_seed(seed), batch, sigmas, cdf)
    inner = x.numel() // batch if batch else 1
    acc = math_dtype(x.dtype)
    x_cur, x_next = consistency_pair(x, seed, sigma.to(acc), sigma_next.to(acc), inner, offset)
    return x_cur, x_next, sigma, sigma_next, weight, index


# ---- eager code as public training scripts write it (benchmark baselines) -------------------------

def _per_sample_view(v, x: torch.Tensor):
    if isinstance(v, torch.Tensor) and v.dim() > 0:
        return v.view(-1, *([1] * (x.dim() - 1)))
    return v


def consistency_pair_eager(x: torch.Tensor, sigma, sigma_next) -> Tuple[torch.Tensor, torch.Tensor]:
    """Consistency training's noisy pair as iCT ports write it: one ``randn_like`` and two
    ``x + sigma.view(-1, 1, 1, 1) * noise``."""
    noise = torch.randn_like(x)
    return x + _per_sample_view(sigma, x) * noise, x + _per_sample_view(sigma_next, x) * noise


def add_noise_eager(x: torch.Tensor, sigma, *, alpha=1.0, input_perturbation: float = 0.0,
                    offset_noise: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Diffusion training noise as the diffusers text-to-image example writes it (offset noise,
    then DDPM-IP input perturbation; the target keeps the offset and not the perturbation)."""
    noise = torch.randn_like(x)
    if offset_noise:
        noise = noise + offset_noise * torch.randn(x.shape[0], x.shape[1], *([1] * (x.dim() - 2)),
                                                   device=x.device, dtype=x.dtype)
    new_noise = noise + input_perturbation * torch.randn_like(noise) if input_perturbation else noise
    return _per_sample_view(alpha, x) * x + _per_sample_view(sigma, x) * new_noise, noise


def sampled_consistency_pair_eager(x: torch.Tensor, sigmas: torch.Tensor, probs: torch.Tensor):
    """iCT's step as public code writes it: ``torch.multinomial`` over the interval probabilities,
    gather the two levels, then :func:`consistency_pair_eager`. Returns the same six values."""
    index = torch.multinomial(probs, x.shape[0], replacement=True)
    sigma, sigma_next = sigmas[index], sigmas[index + 1]
    x_cur, x_next = consistency_pair_eager(x, sigma.to(x.dtype), sigma_next.to(x.dtype))
    return x_cur, x_next, sigma, sigma_next, 1.0 / (sigma_next - sigma), index
