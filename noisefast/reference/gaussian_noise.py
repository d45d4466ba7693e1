"""Reference of ``gaussian_noise`` (noise injection): the eager specification of its kernels."""
from __future__ import annotations

import torch

from .._dtypes import math_dtype
from ..random import STREAM_NOISE
from .philox import normal_at, stream_positions


def gaussian_noise(x: torch.Tensor, seed: torch.Tensor, std: float, scale, inner: int, offset: int, segment: int,
                   stride: int) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::gaussian_noise``.

    out = x + std * scale[(i // inner) % len(scale)] * z_i with z_i element
    ``offset + (i // segment) * stride + i % segment`` of stream STREAM_NOISE (offset + i when
    segment == stride; a DTensor shard's global indices otherwise); math in float32 (float64 for
    float64 x), the order of operations of the kernels.
    """
    acc = math_dtype(x.dtype)
    positions = stream_positions(x.numel(), offset, segment, stride, device=x.device)
    z = normal_at(positions, int(seed.reshape(()).item()), STREAM_NOISE).to(acc)
    sigma = torch.tensor(std, dtype=acc, device=x.device)
    if scale is not None:
        index = (torch.arange(x.numel(), device=x.device) // inner) % scale.numel()
        sigma = sigma * scale.reshape(-1).to(acc)[index]
    out = x.reshape(-1).to(acc) + sigma * z
    return out.to(x.dtype).view(x.shape)
