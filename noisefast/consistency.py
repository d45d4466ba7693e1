"""The noise of one consistency-training step: levels from a curriculum, a level pair per sample,
and the two noisy inputs with one shared z.

    noise = ConsistencyNoise(total_steps=400_000)            # iCT: log-normal levels, exponential N(k)
    batch = noise.sample(x, step)
    loss = (batch.weight * d(model(batch.x_next, batch.sigma_next),
                             model(batch.x_cur, batch.sigma).detach())).mean()

iCT (Song & Dhariwal 2023): Karras levels (docs/formulas.md, "Karras noise levels") for N(k) from the curriculum,
interval i drawn from a level distribution, student input x + sigma_{i+1} z, target input
x + sigma_i z, weight lambda = 1 / (sigma_{i+1} - sigma_i). For an i.i.d. level distribution
(``levels.iid``: log-normal, uniform, i.i.d. polynomial) the levels are drawn by inverse CDF inside
the perturbation kernel (``noisefast::sampled_consistency_pair``: one launch on a GPU); a sampler
that couples the batch (the stratified polynomial sampler of Gokmen et al. 2024) draws the indices
first and then calls ``consistency_pair``.
"""
from __future__ import annotations

from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch

from ._checks import check_float_tensor
from .ops.perturbation import consistency_pair
from .ops.perturbation import check_level_table, sampled_consistency_pair_op
from .random import draw_seed
from .schedules import KarrasLevels, LogNormalLevels, make_curriculum


class ConsistencyBatch(NamedTuple):
    """What :meth:`ConsistencyNoise.sample` returns (B = x.shape[0])."""

    x_cur: torch.Tensor       # x + sigma z: the target network's input; dtype and shape of x
    x_next: torch.Tensor      # x + sigma_next z: the student's input, same z
    sigma: torch.Tensor       # [B] float32, sigma_i
    sigma_next: torch.Tensor  # [B] float32, sigma_{i+1}
    weight: torch.Tensor      # [B] float32, 1 / (sigma_{i+1} - sigma_i) from the float64 levels
    index: torch.Tensor       # [B] int64, i


class ConsistencyNoise:
    """Noise levels and noisy inputs for consistency training.

    Args:
        levels: the distribution of the interval i over the N - 1 intervals (default
            ``LogNormalLevels()``, iCT's P_mean = -1.1, P_std = 2.0); any object with
            ``sample(batch_size, sigmas, *, generator)``, and for the fused path ``iid = True`` and
            ``cdf(sigmas)`` (float64, last entry 1).
        curriculum: "ict" | "ct" | "sinusoidal" | a curriculum object (``num_levels(step) -> int``).
        total_steps: K, the planned number of training steps (the named curricula need it).
        sigma_min, sigma_max, rho: the Karras levels (defaults 0.002, 80, 7).
        predefined_levels: take every N's levels from one Karras vector built for the curriculum's
            largest N (Gokmen et al. 2024, "predefined Karras noises"; see schedules.KarrasLevels).

    ``sample(x, step, *, generator=None)`` returns a :class:`ConsistencyBatch`. Level tables
    (sigmas and their CDF) are built and checked once per (N, device) and cached.
    """

    def __init__(self, levels=None, curriculum: Union[str, object] = "ict", total_steps: Optional[int] = None,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                 predefined_levels: bool = False):
        self.levels = LogNormalLevels() if levels is None else levels
        if not callable(getattr(self.levels, "sample", None)):
            raise TypeError(f"levels must have a sample(batch_size, sigmas, *, generator) method, "
                            f"got {type(self.levels).__name__}")
        self.curriculum = make_curriculum(curriculum, total_steps)
        if not isinstance(predefined_levels, bool):
            raise TypeError(f"predefined_levels must be a bool, got {type(predefined_levels).__name__}")
        max_levels = self.curriculum.max_levels if predefined_levels else None
        self.karras = KarrasLevels(sigma_min, sigma_max, rho, predefined_max_levels=max_levels)
        self._tables: Dict[Tuple[int, str], Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}

    @property
    def fused(self) -> bool:
        """Whether levels are drawn inside the perturbation kernel (an i.i.d. level distribution)."""
        return bool(getattr(self.levels, "iid", False))

    def num_levels(self, step: int) -> int:
        """N at training step ``step``."""
        return self.curriculum.num_levels(step)

    def table(self, step: int, device=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(sigmas [N] float64, cdf [N-1] float64 or None for a non-i.i.d. sampler) at ``step``."""
        n = self.num_levels(step)
        device = torch.device(device) if device is not None else torch.get_default_device()
        key = (n, str(device))
        cached = self._tables.get(key)
        if cached is None:
            sigmas = self.karras.levels(n, device=device, dtype=torch.float64)
            cdf = None
            if self.fused:
                cdf = self.levels.cdf(sigmas).to(device=device, dtype=torch.float64).contiguous()
                check_level_table(sigmas, cdf)
            cached = self._tables[key] = (sigmas, cdf)
        return cached

    def sample(self, x: torch.Tensor, step: int, *, generator: Optional[torch.Generator] = None) -> ConsistencyBatch:
        """Draw a level pair per sample and the two noisy inputs of ``x`` ([B, ...], float) at ``step``."""
        check_float_tensor(x, "x")
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension [B, ...], got a 0-d tensor")
        sigmas, cdf = self.table(step, x.device)
        if cdf is not None:
            return ConsistencyBatch(*sampled_consistency_pair_op(x, draw_seed(x.device, generator), sigmas, cdf, 0))
        index = self.levels.sample(x.shape[0], sigmas, generator=generator).to(x.device)
        lo, hi = sigmas[index], sigmas[index + 1]
        sigma, sigma_next = lo.to(torch.float32), hi.to(torch.float32)
        x_cur, x_next = consistency_pair(x, sigma, sigma_next, generator=generator)
        return ConsistencyBatch(x_cur, x_next, sigma, sigma_next, (1.0 / (hi - lo)).to(torch.float32), index)

    def __repr__(self) -> str:
        return (f"ConsistencyNoise(levels={self.levels!r}, curriculum={self.curriculum!r}, "
                f"karras={self.karras!r})")
