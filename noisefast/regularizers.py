"""Noise injection for robustness: modules that wrap the fused noise ops."""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import nn

from .ops._checks import check_nonnegative_number
from .ops.gaussian_noise import gaussian_noise


class GaussianNoise(nn.Module):
    """Adds N(0, std^2) noise in training mode; the identity in eval mode.

    Same semantics as Keras' ``GaussianNoise`` layer, fused into one pass (see
    :func:`noisefast.gaussian_noise`). ``std`` is a number >= 0 or a tensor broadcastable to the
    input (registered as a buffer so it follows ``.to(device)``).

    Shapes: input (*), output (*), same dtype.
    """

    def __init__(self, std: Union[float, torch.Tensor], *, generator: Optional[torch.Generator] = None):
        super().__init__()
        if isinstance(std, torch.Tensor):
            self.register_buffer("std", std.detach().clone())
        else:
            self.std = check_nonnegative_number(std, "std")
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gaussian_noise(x, self.std, training=self.training, generator=self.generator)

    def extra_repr(self) -> str:
        std = self.std if not isinstance(self.std, torch.Tensor) else f"tensor{tuple(self.std.shape)}"
        return f"std={std}"
