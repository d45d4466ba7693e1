"""Reference of the noise-injection ops (regularisers): the eager specification of their kernels."""
from __future__ import annotations

import torch

from .random import normal_stream


def gaussian_noise(x: torch.Tensor, seed: torch.Tensor, std: float, scale, inner: int) -> torch.Tensor:
    """Kernel-level reference of ``noisefast_C::gaussian_noise``.

    out = x + std * scale[(i // inner) % len(scale)] * z_i with z from stream 0; math in float32
    (float64 for float64 x), the order of operations of the kernels.
    """
    opmath = torch.float64 if x.dtype == torch.float64 else torch.float32
    z = normal_stream(x.numel(), int(seed.reshape(()).item()), 0, 0, device=x.device).to(opmath)
    sigma = torch.tensor(std, dtype=opmath, device=x.device)
    if scale is not None:
        index = (torch.arange(x.numel(), device=x.device) // inner) % scale.numel()
        sigma = sigma * scale.reshape(-1).to(opmath)[index]
    out = x.reshape(-1).to(opmath) + sigma * z
    return out.to(x.dtype).view(x.shape)
