"""Input perturbation for diffusion and consistency training, fused into one pass over x.

- ``consistency_pair(x, sigma, sigma_next)`` -> (x + sigma z, x + sigma_next z) with ONE z: the
  student and target inputs of consistency training (docs/formulas.md, "iCT"; Song & Dhariwal
  2023, loss E[lambda d(f(x + sigma_{i+1} z), sg f(x + sigma_i z))] with the same z).
- ``add_noise(x, sigma, alpha=, input_perturbation=, offset_noise=)`` -> (alpha x + sigma (eps +
  gamma xi), eps) with eps = z + s o: DDPM-IP (Ning et al. 2023) and offset noise (docs/formulas.md,
  "Input perturbation and offset noise").
- ``sampled_consistency_pair(x, sigmas, cdf)``: a consistency-training step's noise in one op, the
  level pair of each sample drawn inside the kernel (below).

The ops ``noisefast::consistency_pair`` and ``noisefast::add_noise`` take per-sample values as 1-D
tensors of the math dtype (see noisefast/reference/perturbation.py for the conventions). z, xi
and o come from streams STREAM_NOISE, STREAM_PERTURBATION and STREAM_OFFSET of one seed; the
kernels never store them, and backward regenerates them from the seed: autograd saves the seed and
the [B] per-sample values (x too when alpha requires grad), never the noise. The gradient with
respect to a tensor sigma, per-sample sums of grad * noise, is the op
``noisefast::perturbation_noise_grad``: the noise is regenerated inside the reduction, so the
backward allocates nothing larger than [B] (benchmarks/memory_backward.py).

The four ops share their kernel files (csrc/cpu/perturbation_cpu.h, noisefast/triton/
perturbation.py), their per-element noise (csrc/include/noisefast/perturbation.h) and their
reference (noisefast/reference/perturbation.py): the "perturbation" family.
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

import torch

from .._checks import (check_finite_values, check_float_tensor, check_nonnegative_number, check_nonnegative_values,
                       check_num_levels, check_values)
from .._dtensor import Part, batch_part_of, is_dtensor, narrow_to_box, wrap_like
from .._dtypes import math_dtype
from .._library import Kernels, plain_tensor, runs_eagerly
from .._scalars import constant_vector, scalar_on
from ..random import draw_seed_for

Scalar = Union[float, torch.Tensor]

PERTURBATION = "noisefast.reference.perturbation"
PERTURBATION_TRITON = "noisefast.triton.perturbation"


def _sum_per_sample(values: torch.Tensor, count: int, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """Sum of ``values`` (numel elements, row-major) over each of ``count`` equal runs."""
    if numel == 0:
        return torch.zeros(count, dtype=dtype, device=values.device)
    return values.reshape(count, -1).to(dtype).sum(dim=1)


# ---- noisefast::perturbation_noise_grad: the gradient with respect to sigma ---------------------------

@torch.library.custom_op("noisefast::perturbation_noise_grad", mutates_args=())
def perturbation_noise_grad_op(grads: List[torch.Tensor], seed: torch.Tensor, input_perturbation: float,
                               offset_noise: float, count: int, sample_inner: int, channel_inner: int,
                               offset: int) -> torch.Tensor:
    """[len(grads), count] in the math dtype: entry (k, p) = sum over the elements i of sample
    p = i // sample_inner of grads[k][i] * noise_i, where noise_i = eps_i + input_perturbation *
    xi_i is what sigma multiplies in add_noise under ``seed`` (consistency_pair: both scales 0,
    noise = z). The noise is regenerated inside the reduction, never stored. grads: 1 or 2 tensors
    of x's dtype and size (the two outputs of consistency_pair)."""
    return NOISE_GRAD_KERNELS(grads[0].device, grads, seed, input_perturbation, offset_noise, count, sample_inner,
                              channel_inner, offset)


@perturbation_noise_grad_op.register_fake
def _(grads, seed, input_perturbation, offset_noise, count, sample_inner, channel_inner, offset):
    return grads[0].new_empty((len(grads), count), dtype=math_dtype(grads[0].dtype))


NOISE_GRAD_KERNELS = Kernels(perturbation_noise_grad_op, public="perturbation_noise_grad", reference=PERTURBATION,
                             triton=PERTURBATION_TRITON)


# ---- noisefast::consistency_pair -----------------------------------------------------------------

@torch.library.custom_op("noisefast::consistency_pair", mutates_args=())
def consistency_pair_op(x: torch.Tensor, seed: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor,
                        inner: int, offset: int, checked: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    # checked: the caller built sigma and sigma_next from numbers it has validated, so reading them
    # back (a device-to-host sync on CUDA) is skipped.
    if not checked:
        check_nonnegative_values(sigma, "sigma")
        check_nonnegative_values(sigma_next, "sigma_next")
    return PAIR_KERNELS(x.device, x, seed, sigma, sigma_next, inner, offset)


@consistency_pair_op.register_fake
def _(x, seed, sigma, sigma_next, inner, offset, checked=False):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


PAIR_KERNELS = Kernels(consistency_pair_op, public="consistency_pair", reference=PERTURBATION,
                       triton=PERTURBATION_TRITON)


def _pair_setup_context(ctx, inputs, output):
    x, seed, sigma, sigma_next, inner, offset, _ = inputs
    ctx.set_materialize_grads(False)  # an unused output's gradient stays None, not a full-size zero tensor
    ctx.inner, ctx.offset = inner, offset
    ctx.save_for_backward(seed, sigma)


def _pair_backward(ctx, grad_cur, grad_next):
    seed, sigma = ctx.saved_tensors
    grads = [g for g in (grad_cur, grad_next) if g is not None]
    grad_x = (grads[0] + grads[1] if len(grads) == 2 else grads[0]) if ctx.needs_input_grad[0] and grads else None
    # d x_cur / d sigma[p] = z over sample p's elements: per-sample sums of grad * z, z regenerated
    # from the seed inside the reduction (perturbation_noise_grad), one pass for both outputs.
    wanted = [g if needed else None for g, needed in ((grad_cur, ctx.needs_input_grad[2]),
                                                       (grad_next, ctx.needs_input_grad[3]))]
    present = [g for g in wanted if g is not None]
    sums = iter(NOISE_GRAD_KERNELS.call(present, seed, 0.0, 0.0, sigma.numel(), ctx.inner, 1, ctx.offset)
                if present else ())
    grad_sigma, grad_sigma_next = (
        (next(sums).to(sigma.dtype) if g is not None else torch.zeros_like(sigma)) if needed else None
        for g, needed in zip(wanted, ctx.needs_input_grad[2:4]))
    return grad_x, None, grad_sigma, grad_sigma_next, None, None, None


PAIR_KERNELS.register_autograd(_pair_backward, setup_context=_pair_setup_context)


# ---- noisefast::add_noise ------------------------------------------------------------------------

@torch.library.custom_op("noisefast::add_noise", mutates_args=())
def add_noise_op(x: torch.Tensor, seed: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 input_perturbation: float, offset_noise: float, sample_inner: int, channel_inner: int,
                 offset: int, checked: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    if not checked:  # see consistency_pair_op
        check_finite_values(alpha, "alpha")
        check_nonnegative_values(sigma, "sigma")
    return ADD_NOISE_KERNELS(x.device, x, seed, alpha, sigma, input_perturbation, offset_noise,
                             sample_inner, channel_inner, offset)


@add_noise_op.register_fake
def _(x, seed, alpha, sigma, input_perturbation, offset_noise, sample_inner, channel_inner, offset,
      checked=False):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


ADD_NOISE_KERNELS = Kernels(add_noise_op, public="add_noise", reference=PERTURBATION, triton=PERTURBATION_TRITON)


def _add_noise_setup_context(ctx, inputs, output):
    x, seed, alpha, sigma, input_perturbation, offset_noise, sample_inner, channel_inner, offset, _ = inputs
    ctx.set_materialize_grads(False)  # the target's gradient (unused) stays None, not a full-size zero tensor
    ctx.args = (input_perturbation, offset_noise, sample_inner, channel_inner, offset)
    ctx.x_shape, ctx.x_dtype, ctx.numel = x.shape, x.dtype, x.numel()
    ctx.save_for_backward(seed, alpha, sigma, x if ctx.needs_input_grad[2] else None)


def _add_noise_backward(ctx, grad_noisy, grad_target):
    seed, alpha, sigma, x = ctx.saved_tensors
    input_perturbation, offset_noise, sample_inner, channel_inner, offset = ctx.args
    count, acc = alpha.numel(), alpha.dtype
    grad_x = grad_alpha = grad_sigma = None
    if grad_noisy is None:
        return None, None, None, None, None, None, None, None, None, None
    g = grad_noisy.reshape(-1).to(acc) if ctx.needs_input_grad[0] or ctx.needs_input_grad[2] else None
    if ctx.needs_input_grad[0]:
        grad_x = _add_noise_input_gradient(g, alpha, ctx.numel, ctx.x_shape, ctx.x_dtype)
    if ctx.needs_input_grad[2]:
        grad_alpha = _sum_per_sample(g * x.reshape(-1).to(acc), count, ctx.numel, acc)
    if ctx.needs_input_grad[3]:
        # d x_noisy / d sigma[p] = eps + gamma xi: per-sample sums of grad * noise, the noise
        # regenerated from the seed inside the reduction, never stored.
        grad_sigma = NOISE_GRAD_KERNELS.call([grad_noisy], seed, input_perturbation, offset_noise, count,
                                                sample_inner, channel_inner, offset)[0].to(sigma.dtype)
    return grad_x, None, grad_alpha, grad_sigma, None, None, None, None, None, None


ADD_NOISE_KERNELS.register_autograd(_add_noise_backward, setup_context=_add_noise_setup_context)


def _add_noise_input_gradient(g: torch.Tensor, alpha: torch.Tensor, numel: int, x_shape: torch.Size,
                              x_dtype: torch.dtype) -> torch.Tensor:
    """d x_noisy / d x applied to ``g`` (flat, in alpha's math dtype): alpha of each sample times g."""
    count = alpha.numel()
    per_element = g if numel == 0 else (g.reshape(count, -1) * alpha.view(count, 1)).reshape(-1)
    return per_element.to(x_dtype).view(x_shape)


# ---- lighter autograd for the common case: x alone needs a gradient ----------------------------------
#
# In eager mode, when x requires grad and the per-sample tensors do not (levels drawn by a schedule),
# backward needs no noise: the identity for each consistency-pair output, alpha for add_noise. These
# Functions run the ops' implementations with that gradient alone; the general autograd
# (setup_context, several saved tensors, the sigma gradients) costs ~2 us more per call, which small
# tensors notice (benchmarks/bench_overhead.py). Same kernels, same results.

_is_grad_enabled = torch.is_grad_enabled


def _x_alone_needs_grad(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> bool:
    """Eager mode, grad mode, plain CPU/CUDA tensors, x requires grad and neither a nor b does.
    (Written out for speed: generator expressions would cost ~0.5 us here.)"""
    return (runs_eagerly() and x.requires_grad and not a.requires_grad and not b.requires_grad and _is_grad_enabled()
            and plain_tensor(x) and plain_tensor(a) and plain_tensor(b))


# apply(x, the other arguments as one tuple): each argument of apply costs; none of the others
# needs a gradient here.

class _PairWithIdentityGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, arguments):
        ctx.set_materialize_grads(False)
        return PAIR_KERNELS.implementation_function()(x, *arguments)

    @staticmethod
    def backward(ctx, grad_cur, grad_next):
        grads = [g for g in (grad_cur, grad_next) if g is not None]
        return (grads[0] + grads[1] if len(grads) == 2 else grads[0]) if grads else None, None


class _AddNoiseWithInputGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, arguments):
        ctx.set_materialize_grads(False)
        ctx.x_shape, ctx.x_dtype, ctx.numel = x.shape, x.dtype, x.numel()
        ctx.save_for_backward(arguments[1])  # alpha
        return ADD_NOISE_KERNELS.implementation_function()(x, *arguments)

    @staticmethod
    def backward(ctx, grad_noisy, grad_target):
        if grad_noisy is None:
            return None, None
        (alpha,) = ctx.saved_tensors
        g = grad_noisy.reshape(-1).to(alpha.dtype)
        return _add_noise_input_gradient(g, alpha, ctx.numel, ctx.x_shape, ctx.x_dtype), None


# ---- public functions ----------------------------------------------------------------------------

def per_sample_arguments(x: torch.Tensor, values: Dict[str, Scalar], *,
                         nonnegative: Tuple[str, ...]) -> Tuple[List[torch.Tensor], int]:
    """Turn scalars and per-sample tensors into the ops' form: 1-D tensors of x's math dtype, all of
    one length P, and ``inner`` such that element i of x uses entry i // inner.

    A value is a real number or a float tensor of shape [], [B] or [B, 1, ..., 1] (B = x.shape[0]).
    P = B when any value is a per-sample tensor, else 1. Raises TypeError/ValueError naming the
    argument; numbers are range-checked here, tensor values inside the op.
    """
    batch = x.shape[0] if x.dim() > 0 else None
    device = x.device  # (each .device builds a torch.device: read once)
    per_sample = False
    for name, value in values.items():
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise TypeError(f"{name} must be a float tensor or a number, got a {value.dtype} tensor")
            dim = value.dim()
            if dim == 0:
                if value.device != device and not value.is_cpu:
                    raise ValueError(f"{name} is on {value.device} but x is on {device}")
                continue
            if value.device != device:
                raise ValueError(f"{name} is on {value.device} but x is on {device}")
            if (batch is None or dim > x.dim() or value.shape[0] != batch
                    or (dim > 1 and any(s != 1 for s in value.shape[1:]))):
                raise ValueError(f"{name} must be a number or a tensor of shape [B] (one value per sample; "
                                 f"x has shape {tuple(x.shape)}), got shape {tuple(value.shape)}")
            per_sample = True
        elif name in nonnegative:
            check_nonnegative_number(value, name)
        elif isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"{name} must be a real number or a tensor, got {type(value).__name__}")
    acc = math_dtype(x.dtype)
    count = batch if per_sample else 1
    tensors = []
    for value in values.values():
        if isinstance(value, torch.Tensor):
            if value.dim() == 0 and value.is_cpu and not x.is_cpu:
                t = scalar_on(value, device, acc)  # no host-to-device copy
            else:  # (each skipped call saves ~2 us on small tensors)
                t = value if value.dtype == acc else value.to(dtype=acc)
                if t.dim() != 1:
                    t = t.reshape(-1)
            tensors.append(t.expand(count) if count != 1 and t.numel() == 1 else t)
        else:
            tensors.append(constant_vector(float(value), count, acc, device))
    numel = x.numel()
    inner = max(numel // count, 1) if count else 1
    return tensors, inner


def consistency_pair(x: torch.Tensor, sigma: Scalar, sigma_next: Scalar, *,
                     generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The two noisy inputs of consistency training, with ONE shared noise z, in one pass.

    x_cur = x + sigma * z and x_next = x + sigma_next * z, z ~ N(0, I) shaped like x (iCT, Song &
    Dhariwal 2023: the loss compares f(x + sigma_{i+1} z) with sg f(x + sigma_i z), same z).
    Replaces ``noise = torch.randn_like(x); x + sigma.view(-1, 1, 1, 1) * noise`` (twice).

    Args:
        x: float32, float16, bfloat16 or float64, any shape [B, ...] and layout.
        sigma, sigma_next: numbers >= 0, or float tensors of shape [B] (or [B, 1, ..., 1]): one
            level per sample. A tensor that requires grad gets d/d sigma_b = sum over sample b of
            grad * z (z regenerated from the seed, never stored).
        generator: where the seed is drawn (default: x's device's default generator).

    Returns:
        (x_cur, x_next), contiguous, dtype of x; math in float32 (float64 for float64 x). The
        gradient with respect to x is the identity for each output. z is element i of stream
        STREAM_NOISE of the portable stream (noisefast.randn), the same on every backend.

    Raises TypeError for a non-float x or sigma; ValueError naming sigma/sigma_next when one is
    negative, NaN or infinite, or its length is not B.

    DTensors: x may be a DTensor sharded along the batch (Shard(0)) or replicated; each rank
    perturbs its own samples (no communication), the outputs keep x's placements, and every
    element gets the noise it gets unsharded under the same seed (its global index; seed all ranks
    alike). Per-sample sigmas are [B] plain tensors (each rank takes its samples' values) or
    DTensors sharded like x. Other placements raise NotImplementedError, Partial ValueError.
    """
    check_float_tensor(x, "x")
    values = {"sigma": sigma, "sigma_next": sigma_next}
    whole, offset = x, 0
    if type(x) is not torch.Tensor and is_dtensor(x):
        part, values = per_sample_parts(x, values)
        x, offset = part.local, part.map.offset
    (sig, sig_next), inner = per_sample_arguments(x, values, nonnegative=("sigma", "sigma_next"))
    checked = not (isinstance(sigma, torch.Tensor) or isinstance(sigma_next, torch.Tensor))
    seed = draw_seed_for(x, generator)
    if _x_alone_needs_grad(x, sig, sig_next):
        out = _PairWithIdentityGradient.apply(x, (seed, sig, sig_next, inner, offset, checked))
    else:
        out = PAIR_KERNELS.call(x, seed, sig, sig_next, inner, offset, checked)
    return out if whole is x else tuple(wrap_like(o, whole) for o in out)


def per_sample_parts(x, values: Dict[str, Scalar]) -> Tuple[Part, Dict[str, Scalar]]:
    """For a DTensor x sharded along the batch (Shard(0)) or replicated: this rank's :class:`Part`
    and the per-sample values its samples use (a plain [B] tensor, or a DTensor sharded like x, is
    narrowed to the rank's samples; numbers and 0-d tensors stay). NotImplementedError for other
    placements, ValueError for Partial ones, naming x."""
    part = batch_part_of(x, "x")
    local_values = {}
    for name, value in values.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            value = narrow_to_box(value, part, tuple(x.shape), name, leading=True, mesh=x.device_mesh)
        elif is_dtensor(value):
            value = value.to_local()
        local_values[name] = value
    return part, local_values


def add_noise(x: torch.Tensor, sigma: Scalar, *, alpha: Scalar = 1.0, input_perturbation: float = 0.0,
              offset_noise: float = 0.0, generator: Optional[torch.Generator] = None
              ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Noise a diffusion training input, with optional input perturbation and offset noise, in one pass.

    eps = z + offset_noise * o,   x_noisy = alpha * x + sigma * (eps + input_perturbation * xi),
    target = eps, where z, xi ~ N(0, I) shaped like x and o ~ N(0, I) shaped [B, C, 1, ...] (one
    value per sample and channel). DDPM-IP: Ning et al. 2023 (gamma = 0.1; the target stays eps);
    offset noise: the offset is part of the target (docs/formulas.md). For DDPM
    x_t = sqrt(abar) x0 + sqrt(1 - abar) eps pass alpha = sqrt(abar), sigma = sqrt(1 - abar); for
    EDM/VE noising alpha = 1.

    Args:
        x: float32, float16, bfloat16 or float64, shape [B, C, ...] (any shape without offset noise).
        sigma: a number >= 0 or a float tensor [B]; alpha: a finite number or a float tensor [B].
            Tensors that require grad receive gradients (noise regenerated from the seed).
        input_perturbation: gamma >= 0 (0 draws no xi). offset_noise: s >= 0 (0 draws no o).
        generator: where the seed is drawn.

    Returns:
        (x_noisy, target), contiguous, dtype of x; math in float32 (float64 for float64 x).
        z, xi, o are streams STREAM_NOISE, STREAM_PERTURBATION, STREAM_OFFSET of one seed (o_{b,c}
        is element b*C + c). d x_noisy / d x = alpha; the target has no gradient.

    DTensors: as :func:`consistency_pair` (Shard(0) or Replicate, noise by global index); offset
    noise on a batch-sharded x raises NotImplementedError (its stream is indexed by the local sample).
    """
    check_float_tensor(x, "x")
    gamma = check_nonnegative_number(input_perturbation, "input_perturbation")
    offset_scale = check_nonnegative_number(offset_noise, "offset_noise")
    if offset_scale != 0.0 and x.dim() < 2:
        raise ValueError(f"offset_noise needs x of shape [B, C, ...] (one offset per sample and channel), "
                         f"got shape {tuple(x.shape)}")
    values = {"alpha": alpha, "sigma": sigma}
    whole, offset = x, 0
    if type(x) is not torch.Tensor and is_dtensor(x):
        part, values = per_sample_parts(x, values)
        if offset_scale != 0.0 and part.box_shape[0] != whole.shape[0]:
            raise NotImplementedError(
                "add_noise: offset_noise on a DTensor sharded along the batch (Shard(0)) is not supported: "
                "the offset noise of sample b is stream element b * C + c counted from the shard's first "
                "sample, not the global one; replicate x, or add the offset noise without sharding")
        x, offset = part.local, part.map.offset
    (alpha_t, sigma_t), sample_inner = per_sample_arguments(x, values, nonnegative=("sigma",))
    channel_inner = 1
    if offset_scale != 0.0 and x.shape[0] * x.shape[1] > 0:
        channel_inner = max(x.numel() // (x.shape[0] * x.shape[1]), 1)
    alpha_given, sigma_given = isinstance(alpha, torch.Tensor), isinstance(sigma, torch.Tensor)
    if not alpha_given and not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be finite, got {float(alpha)}")
    checked = not (alpha_given or sigma_given)
    if not checked and runs_eagerly() and x.is_cpu and plain_tensor(x) and plain_tensor(alpha_t) and plain_tensor(sigma_t):
        # Plain CPU tensors in eager mode: the tensors given are checked here, on the host, and the
        # op is told so; it would otherwise also read the vectors made from numbers (checked already).
        if alpha_given:
            check_finite_values(alpha_t, "alpha")
        if sigma_given:
            check_nonnegative_values(sigma_t, "sigma")
        checked = True
    arguments = (draw_seed_for(x, generator), alpha_t, sigma_t, gamma, offset_scale, sample_inner, channel_inner,
                 offset, checked)
    if _x_alone_needs_grad(x, alpha_t, sigma_t):
        out = _AddNoiseWithInputGradient.apply(x, arguments)
    else:
        out = ADD_NOISE_KERNELS.call(x, *arguments)
    return out if whole is x else tuple(wrap_like(o, whole) for o in out)


# ---- noisefast::sampled_consistency_pair ---------------------------------------------------------
#
# A consistency-training step's noise in one op: sample each sample's level pair by inverse CDF from
# the portable uniform stream, then form the consistency pair (one launch on a GPU).
#
# ``noisefast::sampled_consistency_pair(x, seed, sigmas, cdf, offset)`` returns
# (x_cur, x_next, sigma, sigma_next, weight, index): for sample b, u_b = element b of the uniform
# stream STREAM_LEVELS, index_b = the smallest i with u_b < cdf[i] (clamped to n - 2), sigma_b =
# sigmas[index_b] and sigma_next_b = sigmas[index_b + 1] as float32, weight_b = 1 / (sigma_next_b -
# sigma_b) (iCT's lambda, formed in float64), and x_cur = x + sigma_b z, x_next = x + sigma_next_b z
# with one z (STREAM_NOISE). The rule lives in csrc/include/noisefast/levels.h,
# noisefast/triton/levels.py and noisefast/reference/perturbation.py.
#
# This draws i.i.d. levels, which is what the iCT log-normal sampler does (Song & Dhariwal 2023:
# ``torch.multinomial(p, B, replacement=True)`` in public code) and what any sampler with a fixed
# interval distribution does; samplers that couple a batch (the stratified polynomial sampler of
# Gokmen et al. 2024) sample indices first and call ``consistency_pair``.


DTENSOR_LEVELS_UNSUPPORTED = (
    "{where}: x is a DTensor, and the levels drawn inside the op are indexed by the local sample, not the "
    "global one; sample the levels of the whole batch alike on every rank and call "
    "noisefast.consistency_pair(x, sigma, sigma_next), which serves DTensors sharded along the batch")


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
    return SAMPLED_PAIR_KERNELS(x.device, x, seed, sigmas, cdf, offset)


@sampled_consistency_pair_op.register_fake
def _(x, seed, sigmas, cdf, offset):
    batch = x.shape[0]
    per_sample = x.new_empty((batch,), dtype=torch.float32)
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format),
            per_sample, torch.empty_like(per_sample), torch.empty_like(per_sample),
            x.new_empty((batch,), dtype=torch.int64))


SAMPLED_PAIR_KERNELS = Kernels(sampled_consistency_pair_op, public="sampled_consistency_pair",
                               reference=PERTURBATION, triton=PERTURBATION_TRITON)


def _sampled_setup_context(ctx, inputs, output):
    pass  # the gradient to x is the identity: nothing is saved


def _sampled_backward(ctx, grad_cur, grad_next, *unused):
    # x_cur and x_next are x plus noise: the gradient to x is the sum of theirs.
    grads = [g for g in (grad_cur, grad_next) if g is not None]
    grad_x = None
    if ctx.needs_input_grad[0] and grads:
        grad_x = grads[0] + grads[1] if len(grads) == 2 else grads[0]
    return grad_x, None, None, None, None


SAMPLED_PAIR_KERNELS.register_autograd(_sampled_backward, setup_context=_sampled_setup_context)


def check_level_table(sigmas: torch.Tensor, cdf: torch.Tensor, num_levels=None):
    """TypeError/ValueError unless ``sigmas`` is n >= 2 ascending finite levels >= 0 and ``cdf`` is
    n - 1 nondecreasing values in [0, 1] ending at 1 (within 1e-6); returns n.

    Without ``num_levels`` n = sigmas.numel(). With it (an int, or a 0-d integer tensor on the
    tables' device) the tables have a fixed capacity M (sigmas [M], cdf [M-1]) and only their first
    n and n - 1 entries are checked. Values are checked by ``check_values``: read on the host on the
    CPU in eager mode, on the device otherwise (no synchronisation, nothing for a graph to guard).
    """
    for name, t in (("sigmas", sigmas), ("cdf", cdf)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a float tensor, got {type(t).__name__ if not isinstance(t, torch.Tensor) else t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    if sigmas.numel() < 2 or cdf.numel() != sigmas.numel() - 1:
        raise ValueError(f"need n >= 2 sigmas and n - 1 cdf values, got {sigmas.numel()} sigmas and "
                         f"{cdf.numel()} cdf values")
    if cdf.device != sigmas.device:
        raise ValueError(f"sigmas and cdf must be on one device, got {sigmas.device} and {cdf.device}")
    s, c = sigmas.detach().double(), cdf.detach().double()
    if num_levels is None:
        n = s.numel()
        level_ok = torch.isfinite(s) & (s >= 0)
        ascending, cdf_ok, nondecreasing = s[1:] > s[:-1], torch.isfinite(c) & (c >= 0), c[1:] >= c[:-1]
    else:
        n = check_num_levels(num_levels, s.numel(), s.device)
        beyond = torch.arange(s.numel(), device=s.device) >= n  # entries past the n levels
        level_ok = torch.isfinite(s) & (s >= 0) | beyond
        ascending = (s[1:] > s[:-1]) | beyond[1:]
        cdf_ok = torch.isfinite(c) & (c >= 0) | beyond[1:]
        nondecreasing = (c[1:] >= c[:-1]) | beyond[2:]
    check_values(level_ok.all() & ascending.all(), "sigmas must be finite, >= 0 and strictly ascending")
    # Entry n - 2 by a gather when n is a tensor (indexing with it would read it on the host).
    last = c.gather(0, (n - 2).reshape(1)) if isinstance(n, torch.Tensor) else c[n - 2]
    check_values(cdf_ok.all() & nondecreasing.all() & ((last - 1.0).abs() <= 1e-6).all(),
                 "cdf must be nondecreasing values in [0, 1] whose last entry is 1")
    return n


def sampled_consistency_pair(x: torch.Tensor, sigmas: torch.Tensor, cdf: torch.Tensor, *,
                             num_levels: Optional[Union[int, torch.Tensor]] = None,
                             generator: Optional[torch.Generator] = None) -> SampledPair:
    """Sample a level pair per sample from a discrete distribution over the intervals of ``sigmas``
    and form the consistency pair, in one op.

    Args:
        x: [B, ...] float32, float16, bfloat16 or float64, any layout.
        sigmas: [n] ascending levels (float64 recommended: the table is read in float64).
        cdf: [n - 1] cumulative probabilities of the intervals (sigma_i, sigma_{i+1}), float64,
            last entry 1: ``probs.cumsum(0)`` normalised.
        num_levels: None, or n as an int or a 0-d integer tensor on x's device: ``sigmas`` [M] and
            ``cdf`` [M-1] are then tables of a fixed capacity M whose first n and n - 1 entries
            are used (a sampler's ``cdf(sigmas, num_levels=n)`` has that form). With n a tensor a
            compiled step neither recompiles nor synchronises when n changes.
        generator: where the seed is drawn.

    Returns a :class:`SampledPair`. Checks the table at every call (``check_level_table``, on the
    device for CUDA tensors and under torch.compile: no synchronisation); ``ConsistencyNoise``
    checks its tables once and calls the op directly.
    """
    check_float_tensor(x, "x")
    if x.dim() == 0:
        raise ValueError("x must have a batch dimension, got a 0-d tensor")
    if is_dtensor(x):
        raise NotImplementedError(DTENSOR_LEVELS_UNSUPPORTED.format(where="sampled_consistency_pair"))
    for name, t in (("sigmas", sigmas), ("cdf", cdf)):
        if isinstance(t, torch.Tensor) and t.device != x.device:
            raise ValueError(f"{name} must be on x's device {x.device}, got {t.device}")
    n = check_level_table(sigmas, cdf, num_levels)
    cdf = cdf.to(torch.float64)
    if num_levels is not None:
        # Entries from n - 2 on read as 1: the kernels' clamp to the last interval, at n.
        cdf = torch.where(torch.arange(cdf.numel(), device=cdf.device) >= n - 2, 1.0, cdf)
    seed = draw_seed_for(x, generator)
    return SampledPair(*sampled_consistency_pair_op(x, seed, sigmas.to(torch.float64), cdf, 0))
