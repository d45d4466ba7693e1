"""Beta and Gamma variates drawn from a ``torch.Generator``, without host synchronisation.

``torch.distributions.Beta`` takes no generator, so mixup's lam could not be reproduced from the
generator a user passes. Here Gamma(a) comes from Marsaglia & Tsang's method ("A simple method for
generating gamma variables", ACM TOMS 26(3), 2000) driven by ``torch.randn``/``torch.rand`` with
the caller's generator, and Beta(a, b) = X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b).

The method is a rejection sampler. To stay free of data-dependent control flow (no host sync on a
GPU, traceable by torch.compile), each variate gets a fixed number of candidates
(``CANDIDATES`` = 16) and takes the first accepted one. A candidate is accepted with probability
> 0.95 for every shape (shapes below 1 are boosted to a + 1 first: Gamma(a) = Gamma(a + 1) U^(1/a),
Marsaglia & Tsang section 6), so all 16 are rejected with probability < 0.05^16 < 2e-21; only then
is the first candidate used unchecked. Up to that event the draws are exact.

Everything is computed in float64 and in logs (log X - log Y), so that Beta(0.2, 0.2), whose mass
sits within 1e-30 of 0 and 1, neither underflows nor divides 0 by 0.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch

CANDIDATES = 16


def log_gamma_variates(shape: float, n: int, *, generator: Optional[torch.Generator] = None,
                       device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """log of n independent Gamma(shape, 1) variates: float64 tensor [n] on ``device``.

    ``shape`` > 0. Draws n * CANDIDATES normals and as many uniforms from ``generator`` (and n
    more uniforms when shape < 1), in that order, whatever the values drawn.
    """
    if not (isinstance(shape, (int, float)) and math.isfinite(shape) and shape > 0):
        raise ValueError(f"shape must be a finite number > 0, got {shape!r}")
    boost = shape < 1.0
    d = (shape + 1.0 if boost else shape) - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    kw = dict(dtype=torch.float64, device=device, generator=generator)
    z = torch.randn(n, CANDIDATES, **kw)
    u = 1.0 - torch.rand(n, CANDIDATES, **kw)  # (0, 1]: log(u) is finite
    t = 1.0 + c * z
    v = t * t * t
    positive = v > 0
    log_v = torch.log(torch.where(positive, v, torch.ones_like(v)))
    accept = positive & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = torch.argmax(accept.to(torch.uint8), dim=1, keepdim=True)  # first accepted (0 if none)
    log_g = math.log(d) + torch.gather(log_v, 1, first).squeeze(1)
    if boost:
        log_g = log_g + torch.log(1.0 - torch.rand(n, **kw)) / shape
    return log_g


def beta_variates(a: float, b: float, n: int, *, generator: Optional[torch.Generator] = None,
                  device: Union[str, torch.device, None] = None) -> torch.Tensor:
    """n independent Beta(a, b) variates in [0, 1]: float64 tensor [n] on ``device``.

    lam = X / (X + Y) = sigmoid(log X - log Y), X ~ Gamma(a), Y ~ Gamma(b) (X drawn first).
    """
    log_x = log_gamma_variates(a, n, generator=generator, device=device)
    log_y = log_gamma_variates(b, n, generator=generator, device=device)
    return torch.sigmoid(log_x - log_y)
