"""A consistency-training step's noise in one op: sample each sample's level pair by inverse CDF from
the portable uniform stream, then form the consistency pair (one launch on a GPU).

``noisefast::sampled_consistency_pair(x, seed, sigmas, cdf, offset)`` returns
(x_cur, x_next, sigma, sigma_next, weight, index): for sample b, u_b = element b of the uniform
stream STREAM_LEVELS, index_b = the smallest i with u_b < cdf[i] (clamped to n - 2), sigma_b =
sigmas[index_b] and sigma_next_b = sigmas[index_b + 1] as float32, weight_b = 1 / (sigma_next_b -
sigma_b) (iCT's lambda, formed in float64), and x_cur = x + sigma_b z, x_next = x + sigma_next_b z
with one z (STREAM_NOISE). The rule lives in csrc/include/noisefast/levels.h,
noisefast/triton/levels.py and noisefast/reference/perturbation.py.

This draws i.i.d. levels, which is what the iCT log-normal sampler does (Song & Dhariwal 2023:
``torch.multinomial(p, B, replacement=True)`` in public code) and what any sampler with a fixed
interval distribution does; samplers that couple a batch (the stratified polynomial sampler of
Gokmen et al. 2024) sample indices first and call ``consistency_pair``.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from .._library import Kernels
from ..random import draw_seed
from ._checks import check_float_tensor, values_checkable

KERNELS = Kernels(
    "sampled_consistency_pair",
    reference="noisefast.reference.perturbation:sampled_consistency_pair",
    compiled="sampled_consistency_pair",
    triton="noisefast.triton.perturbation:sampled_consistency_pair",
    gpu_preference=("triton",),
)


class SampledPair(NamedTuple):
    x_cur: torch.Tensor       # x + sigma z, dtype of x
    x_next: torch.Tensor      # x + sigma_next z
    sigma: torch.Tensor       # [B] float32
    sigma_next: torch.Tensor  # [B] float32
    weight: torch.Tensor      # [B] float32, 1 / (sigma_next - sigma)
    index: torch.Tensor       # [B] int64, the interval (sigma_index, sigma_index+1)


@torch.library.custom_op("noisefast::sampled_consistency_pair", mutates_args=())
def sampled_consistency_pair_op(x: torch.Tensor, seed: torch.Tensor, sigmas: torch.Tensor, cdf: torch.Tensor,
                                offset: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                      torch.Tensor, torch.Tensor]:
    # No value checks here: the search only ever returns indices in [0, n - 2], whatever the table
    # holds, and callers validate their tables once (check_level_table) rather than every step.
    return KERNELS(x.device, x, seed, sigmas, cdf, offset)


@sampled_consistency_pair_op.register_fake
def _(x, seed, sigmas, cdf, offset):
    batch = x.shape[0]
    per_sample = x.new_empty((batch,), dtype=torch.float32)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format),
            per_sample, torch.empty_like(per_sample), torch.empty_like(per_sample),
            x.new_empty((batch,), dtype=torch.int64))


def _setup_context(ctx, inputs, output):
    pass


def _backward(ctx, grad_cur, grad_next, *unused):
    # x_cur and x_next are x plus noise: the gradient to x is the sum of theirs.
    grads = [g for g in (grad_cur, grad_next) if g is not None]
    grad_x = None
    if ctx.needs_input_grad[0] and grads:
        grad_x = grads[0] + grads[1] if len(grads) == 2 else grads[0]
    return grad_x, None, None, None, None


sampled_consistency_pair_op.register_autograd(_backward, setup_context=_setup_context)


def check_level_table(sigmas: torch.Tensor, cdf: torch.Tensor) -> None:
    """TypeError/ValueError unless ``sigmas`` is n >= 2 ascending finite levels >= 0 and ``cdf`` is
    n - 1 nondecreasing values in [0, 1] ending at 1 (within 1e-6). Reads both on the host
    (skipped during CUDA-graph capture)."""
    for name, t in (("sigmas", sigmas), ("cdf", cdf)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if sigmas.numel() < 2 or cdf.numel() != sigmas.numel() - 1:
        raise ValueError(f"need n >= 2 sigmas and n - 1 cdf values, got {sigmas.numel()} sigmas and "
                         f"{cdf.numel()} cdf values")
    if not (values_checkable(sigmas) and values_checkable(cdf)):
        return
    s, c = sigmas.double(), cdf.double()
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()) or bool((s[1:] <= s[:-1]).any()):
        raise ValueError("sigmas must be finite, >= 0 and strictly ascending")
    if (not bool(torch.isfinite(c).all()) or bool((c < 0).any()) or bool((c[1:] < c[:-1]).any())
            or abs(c[-1].item() - 1.0) > 1e-6):
        raise ValueError("cdf must be nondecreasing values in [0, 1] whose last entry is 1")


def sampled_consistency_pair(x: torch.Tensor, sigmas: torch.Tensor, cdf: torch.Tensor, *,
                             generator: Optional[torch.Generator] = None) -> SampledPair:
    """Sample a level pair per sample from a discrete distribution over the intervals of ``sigmas``
    and form the consistency pair, in one op.

    Args:
        x: [B, ...] float32, float16, bfloat16 or float64, any layout.
        sigmas: [n] ascending levels (float64 recommended: the table is read in float64).
        cdf: [n - 1] cumulative probabilities of the intervals (sigma_i, sigma_{i+1}), float64,
            last entry 1: ``probs.cumsum(0)`` normalised.
        generator: where the seed is drawn.

    Returns a :class:`SampledPair`. Validates the table on the host at every call (a sync on CUDA);
    ``ConsistencyNoise`` validates once per table and calls the op directly.
    """
    check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    check_level_table(sigmas, cdf)
    if sigmas.device != x.device or cdf.device != x.device:
        raise ValueError(f"sigmas and cdf must be on x's device {x.device}, got {sigmas.device} and {cdf.device}")
    seed = draw_seed(x.device, generator)
    return SampledPair(*sampled_consistency_pair_op(x, seed, sigmas.to(torch.float64), cdf.to(torch.float64), 0))
