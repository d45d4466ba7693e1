"""Gaussian noise injection: ``gaussian_noise(x, std) = x + std * z``, z ~ N(0, 1), in one pass.

The op ``noisefast::gaussian_noise(x, seed, std, scale, inner, offset, segment, stride)`` computes
``out[i] = x[i] + std * scale[(i // inner) % len(scale)] * z_i`` with z_i element
``offset + (i // segment) * stride + i % segment`` of stream STREAM_NOISE of the portable noise
stream under ``seed`` (element i for a plain tensor: offset 0, segment = stride = 1; a DTensor
shard's global indices otherwise, noisefast/_dtensor.py); the public function turns a std
broadcastable to x into (scale, inner). Its gradient is the identity for x; for a tensor std it is sum(grad * z) over
the broadcast dimensions, with z regenerated from the seed (never stored).
"""
from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch

from .._checks import check_float_tensor, check_nonnegative_number, check_nonnegative_values
from .._dtensor import Part, is_dtensor, narrow_to_box, part_of, wrap_like
from .._dtypes import math_dtype
from .._library import Kernels, host_scalar, plain_tensor, runs_eagerly
from .._scalars import scalar_on
from ..random import STREAM_NOISE, draw_seed_for
from .randn import randn_out


@torch.library.custom_op("noisefast::gaussian_noise", mutates_args=())
def gaussian_noise_op(x: torch.Tensor, seed: torch.Tensor, std: float, scale: Optional[torch.Tensor],
                      inner: int, offset: int, segment: int, stride: int, scale_checked: bool = False) -> torch.Tensor:
    # scale_checked: the caller has validated scale's values already (the noise modules do it on
    # the host when the magnitude changes), which spares a device-to-host read on every call.
    if scale is not None and not scale_checked:
        check_nonnegative_values(scale, "std")
    return KERNELS(x.device, x, seed, std, scale, inner, offset, segment, stride)


@gaussian_noise_op.register_fake
def _(x, seed, std, scale, inner, offset, segment, stride, scale_checked=False):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


KERNELS = Kernels(gaussian_noise_op, public="gaussian_noise", reference="noisefast.reference.gaussian_noise",
                  triton="noisefast.triton.gaussian_noise", cuda=True)


# Autograd saves the seed and the [period] scale, never the noise: backward regenerates z from the seed.
def _setup_context(ctx, inputs, output):
    x, seed, std, scale, inner, offset, segment, stride, _ = inputs
    ctx.std, ctx.inner, ctx.map = std, inner, (offset, segment, stride)
    ctx.numel = x.numel()
    ctx.save_for_backward(seed, scale if scale is not None else None)


def _backward(ctx, grad):
    seed, scale = ctx.saved_tensors
    grad_x = grad if ctx.needs_input_grad[0] else None
    grad_scale = None
    if scale is not None and ctx.needs_input_grad[3] and ctx.numel == 0:
        grad_scale = torch.zeros_like(scale)  # an empty x: no noise, and a period that may be 0
    elif scale is not None and ctx.needs_input_grad[3]:
        z = noise_at(seed, ctx.numel, *ctx.map, grad.device)
        acc = math_dtype(grad.dtype)
        per_element = grad.reshape(-1).to(acc) * z.to(acc) * ctx.std
        period = scale.numel()
        grad_scale = per_element.view(-1, period, ctx.inner).sum(dim=(0, 2)).to(scale.dtype)
    return grad_x, None, None, grad_scale, None, None, None, None, None


KERNELS.register_autograd(_backward, setup_context=_setup_context)


def noise_at(seed: torch.Tensor, numel: int, offset: int, segment: int, stride: int,
             device: torch.device) -> torch.Tensor:
    """The [numel] float32 noise gaussian_noise drew under ``seed`` at these stream positions:
    ``randn_out`` for consecutive positions, else the kernel itself on zeros (0 + 1 * z is z)."""
    if segment == stride:
        z = torch.empty(numel, dtype=torch.float32, device=device)
        randn_out(z, seed, STREAM_NOISE, offset)
        return z
    return KERNELS.call(torch.zeros(numel, dtype=torch.float32, device=device), seed, 1.0, None, 1, offset,
                        segment, stride, True)


def broadcast_as_scale(std: torch.Tensor, shape: torch.Size) -> Tuple[torch.Tensor, int]:
    """Express ``std`` broadcast to ``shape`` as (scale, inner): value of element i (row-major)
    = scale[(i // inner) % scale.numel()].

    Exact whenever the non-1 dimensions of std form one run that matches ``shape`` there (per
    sample [B,1,1,1], per channel [C,1,1], per column [W], a full tensor); otherwise std is
    expanded to ``shape`` (inner = 1), which costs memory but is always right.
    """
    if std.dim() == 0:  # the common scalar tensor, without the general walk below
        return std.reshape(1), 1
    padded = (1,) * (len(shape) - std.dim()) + tuple(std.shape)
    varying = [d for d, s in enumerate(padded) if s != 1]
    if not varying:
        return std.reshape(1), 1
    first, last = varying[0], varying[-1]
    if all(padded[d] == shape[d] for d in range(first, last + 1)):
        inner = 1
        for s in shape[last + 1:]:
            inner *= s
        return std.reshape(-1), max(inner, 1)
    return std.expand(shape).reshape(-1), 1


_is_grad_enabled = torch.is_grad_enabled
_IMPLEMENTATION = KERNELS.implementation_function()


class _NoiseWithIdentityGradient(torch.autograd.Function):
    """The op's implementation with the gradient of the common case: x requires grad, nothing else
    does (a number std, or a scale tensor without gradient), so d out / d x is the identity and
    backward needs nothing saved. The general autograd (setup_context, save_for_backward, the
    scale's gradient) costs ~1.5 us more per call, which small tensors notice."""

    @staticmethod
    def forward(ctx, x, arguments):  # (the other arguments as one tuple: each argument of apply costs)
        return _IMPLEMENTATION(x, *arguments)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def add_gaussian_noise(x: torch.Tensor, seed: torch.Tensor, std: float, scale: Optional[torch.Tensor], inner: int,
                       scale_checked: bool) -> torch.Tensor:
    """The op ``noisefast::gaussian_noise(x, seed, std, scale, inner, 0, 1, 1, scale_checked)`` (a plain
    tensor's stream positions) on checked arguments, through :meth:`Kernels.call`; in eager mode, when x is a plain CPU/CUDA tensor that
    requires grad and the scale (if any) does not, through a lighter autograd.Function with the
    identity gradient (the same kernel, the same result)."""
    if (runs_eagerly() and x.requires_grad and _is_grad_enabled() and (scale is None or not scale.requires_grad)
            and plain_tensor(x) and (scale is None or plain_tensor(scale))):
        return _NoiseWithIdentityGradient.apply(x, (seed, std, scale, inner, 0, 1, 1, scale_checked))
    return KERNELS.call(x, seed, std, scale, inner, 0, 1, 1, scale_checked)


def gaussian_noise(x: torch.Tensor, std: Union[float, torch.Tensor], *, training: bool = True,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Add Gaussian noise: ``x + std * z`` with z ~ N(0, 1) drawn afresh for every call.

    Args:
        x: a float32, float16, bfloat16 or float64 tensor of any shape and layout.
        std: the standard deviation, a number >= 0 or a float tensor broadcastable to x (per
            sample, per channel, per element...). A tensor std receives a gradient.
        training: when False, returns ``x`` itself (Keras GaussianNoise semantics: noise only in
            training).
        generator: where the seed is drawn (default: the default generator of x's device).

    Returns:
        A new contiguous tensor shaped and typed like x; arithmetic in float32 (float64 for
        float64 x). The gradient with respect to x is the identity.

    Noise injection as a regulariser: Bishop 1995, "Training with noise is equivalent to Tikhonov
    regularization"; the noise comes from noisefast's portable stream (noisefast.randn).
    Raises ValueError naming ``std`` if it is negative, NaN or infinite or does not broadcast to x.
    A CUDA std tensor's values are checked on the device (torch._assert_async, no synchronisation):
    a bad value is an error at the next synchronisation, a device-side assertion on CUDA.

    DTensors (``torch.distributed.tensor``): x may be a DTensor with Shard(d) and Replicate
    placements; each rank adds noise to its own shard (no communication) and the result is a
    DTensor with x's placements. Element x[idx] gets exactly the noise it gets when x is not
    sharded, under the same seed, on any number of ranks (docs/design.md, "DTensors and the global
    index"): seed every rank alike (``torch.manual_seed``) or pass generators in the same state. A
    tensor std is a plain tensor broadcastable to x's global shape, or a DTensor sharded like x;
    ValueError for a Partial placement, NotImplementedError for a mesh sharding two dimensions of x
    that do not form evenly spaced runs.
    """
    if type(x) is not torch.Tensor and is_dtensor(x):
        return _gaussian_noise_dtensor(x, std, training, generator)
    check_float_tensor(x, "x")
    std_value, scale, inner = noise_scale(x, std)
    if not training:
        return x
    return add_gaussian_noise(x, draw_seed_for(x, generator), std_value, scale, inner, False)


def gaussian_noise_parts(x, std: Union[float, torch.Tensor], name: str = "x") -> Tuple[Part, Union[float, torch.Tensor]]:
    """This rank's :class:`Part` of the DTensor ``x`` and the piece of ``std`` its shard uses
    (a number stays a number). Errors name ``name`` and ``std``."""
    check_float_tensor(x, name)
    part = part_of(x, name)
    if isinstance(std, torch.Tensor):
        if std.dim() and not _broadcasts_to(std.shape, x.shape):
            raise ValueError(f"std of shape {tuple(std.shape)} does not broadcast to x of shape {tuple(x.shape)}")
        std = narrow_to_box(std, part, tuple(x.shape), "std", mesh=x.device_mesh) if std.dim() else (
            std.to_local() if is_dtensor(std) else std)
    return part, std


def _gaussian_noise_dtensor(x, std, training: bool, generator: Optional[torch.Generator]):
    part, local_std = gaussian_noise_parts(x, std)
    std_value, scale, inner = noise_scale(part.local, local_std)
    if not training:
        return x
    seed = draw_seed_for(part.local, generator)
    offset, segment, stride = part.map
    out = KERNELS.call(part.local, seed, std_value, scale, inner, offset, segment, stride, False)
    return wrap_like(out, x)


def _broadcasts_to(shape: torch.Size, target: torch.Size) -> bool:
    """Whether a tensor of ``shape`` broadcasts to ``target`` (torch.broadcast_shapes(shape, target)
    == target), in plain Python: torch.broadcast_shapes costs ~50 us per call."""
    return len(shape) <= len(target) and all(s == 1 or s == t for s, t in zip(reversed(shape), reversed(target)))


def noise_scale(x: torch.Tensor, std: Union[float, torch.Tensor]) -> Tuple[float, Optional[torch.Tensor], int]:
    """Check ``std`` against x and express it as the op's (std_value, scale, inner).

    A number gives (std, None, 1); a tensor gives (1.0, scale, inner) from :func:`broadcast_as_scale`
    (its values are checked later, inside the op). Errors name ``std``.
    """
    if isinstance(std, torch.Tensor):
        if not std.is_floating_point():
            raise TypeError(f"std must be a float tensor, got {std.dtype}")
        if host_scalar(std):
            # A 0-d CPU std without gradient, in eager mode: its value as the number std, which the
            # kernels multiply exactly as they would the one-element scale (1.0 * s = s, rounded to
            # the math type once either way), for ~3 us less per call.
            value = std.item()
            if not 0.0 <= value < math.inf:
                raise ValueError(f"std must be finite and >= 0 everywhere, found {value}")
            return value, None, 1
        if std.device != x.device and not (std.dim() == 0 and std.device.type == "cpu"):
            raise ValueError(f"std is on {std.device} but x is on {x.device}")
        if not _broadcasts_to(std.shape, x.shape):
            raise ValueError(f"std of shape {tuple(std.shape)} does not broadcast to x of shape {tuple(x.shape)}")
        if std.device != x.device:  # a 0-d CPU std: no host-to-device copy
            std = scalar_on(std, x.device, std.dtype, ())
        scale, inner = broadcast_as_scale(std, x.shape)
        return 1.0, scale, inner
    return check_nonnegative_number(std, "std"), None, 1
