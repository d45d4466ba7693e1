"""Reference of ``gaussian_noise`` (noise injection): the eager specification of its kernels."""
from __future__ import annotations

import torch

from .._dtypes import math_dtype
from ..random import STREAM_NOISE
from .philox import normal_stream


def gaussian_noise(x: torch.Tensor, seed: torch.Tensor, std: float, scale, inner: int) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::gaussian_noise``.

    out = x + std * scale[(i // inner) % len(scale)] * z_i with z from stream STREAM_NOISE; math in
    float32 (float64 for float64 x), the order of operations of the kernels.
    """
    acc = math_dtype(x.dtype)
    z = normal_stream(x.numel(), int(seed.reshape(()).item()), STREAM_NOISE, 0, device=x.device).to(acc)
    sigma = torch.tensor(std, dtype=acc, device=x.device)
    if scale is not None:
        index = (torch.arange(x.numel(), device=x.device) // inner) % scale.numel()
        sigma = sigma * scale.reshape(-1).to(acc)[index]
    out = x.reshape(-1).to(acc) + sigma * z
    return out.to(x.dtype).view(x.shape)
