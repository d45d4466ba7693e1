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

Every level table the run reaches is built, checked and stacked once, at a fixed capacity (the
curriculum's largest N), with the current N as data (:class:`LevelTables`): a step given as a
Python int or as a 0-d device tensor selects its table without reading anything on the host, so
``torch.compile(fullgraph=True)`` traces ``sample`` whole and a changing N neither recompiles the
step nor synchronises the GPU.
"""
from __future__ import annotations

import bisect
from typing import Dict, NamedTuple, Optional, Tuple, Union

import torch

from ._checks import check_float_tensor, check_int, check_int_tensor, check_values
from ._dtensor import is_dtensor
from .ops.perturbation import DTENSOR_LEVELS_UNSUPPORTED, PAIR_KERNELS, SAMPLED_PAIR_KERNELS, check_level_table, per_sample_arguments
from .random import draw_seed_for
from .schedules import KarrasLevels, LevelDistribution, LogNormalLevels, curriculum_stages, make_curriculum

Step = Union[int, torch.Tensor]


class ConsistencyBatch(NamedTuple):
    """What :meth:`ConsistencyNoise.sample` returns (B = x.shape[0])."""

    x_cur: torch.Tensor       # x + sigma z: the target network's input; dtype and shape of x
    x_next: torch.Tensor      # x + sigma_next z: the student's input, same z
    sigma: torch.Tensor       # [B] float32, sigma_i
    sigma_next: torch.Tensor  # [B] float32, sigma_{i+1}
    weight: torch.Tensor      # [B] float32, 1 / (sigma_{i+1} - sigma_i) from the float64 levels
    index: torch.Tensor       # [B] int64, i


class LevelTables(NamedTuple):
    """Every level table of a curriculum, stacked at one capacity M (the largest N) on one device.

    Stage p covers the steps from ``starts[p]`` to ``starts[p + 1] - 1`` (the last stage: every
    later step). Row p of ``sigmas`` holds its N_p = ``num_levels[p]`` ascending levels and then its
    last level repeated; row p of ``cdf`` the interval CDF of the level distribution, exactly 1 from
    entry N_p - 2 on, so an inverse-CDF search over the whole row only ever returns intervals of
    stage p. Built and checked on the host once (:meth:`ConsistencyNoise.tables`).
    """

    starts: torch.Tensor          # [P] int64, ascending, starts[0] = 0
    sigmas: torch.Tensor          # [P, M] float64
    cdf: Optional[torch.Tensor]   # [P, M-1] float64; None for a level distribution that is not i.i.d.
    num_levels: torch.Tensor      # [P] int64

    def to(self, device) -> "LevelTables":
        return LevelTables(*(None if t is None else t.to(device) for t in self))


def _row(table: torch.Tensor, stage: Union[int, torch.Tensor]) -> torch.Tensor:
    """Row ``stage`` of ``table``: a view for an int; for a 0-d tensor a gather on the device (indexing
    with it would read it on the host)."""
    if isinstance(stage, torch.Tensor):
        return table.index_select(0, stage.view(1)).view(table.shape[1:])
    return table[stage]


class ConsistencyNoise:
    """Noise levels and noisy inputs for consistency training.

    Args:
        levels: the distribution of the interval i over the N - 1 intervals (default
            ``LogNormalLevels()``, iCT's P_mean = -1.1, P_std = 2.0); any object with
            ``sample(batch_size, sigmas, *, generator)``, and for the fused path ``iid = True`` and
            ``cdf(sigmas)`` (float64, last entry 1).
        curriculum: "ict" | "ct" | "sinusoidal" | a curriculum object (``num_levels(step) -> int``,
            and ``stages()`` or an int ``total_steps``: see ``schedules.curriculum_stages``).
        total_steps: K, the planned number of training steps (the named curricula need it).
        sigma_min, sigma_max, rho: the Karras levels (defaults 0.002, 80, 7).
        predefined_levels: take every N's levels from one Karras vector built for the curriculum's
            largest N (Gokmen et al. 2024, "predefined Karras noises"; see schedules.KarrasLevels).
        device: where to place the level tables now (default: only the CPU). A step on another
            device copies them there at its first call; for a compiled step, place them before
            compiling (``device=`` or :meth:`tables`) so that the copy is not part of the first graph.

    ``sample(x, step, *, generator=None)`` returns a :class:`ConsistencyBatch`. Every level table
    the curriculum reaches (sigmas and their CDF) is built and checked once, at construction
    (:class:`LevelTables`).
    """

    def __init__(self, levels=None, curriculum: Union[str, object] = "ict", total_steps: Optional[int] = None,
                 sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                 predefined_levels: bool = False, device=None):
        self.levels = LogNormalLevels() if levels is None else levels
        if not callable(getattr(self.levels, "sample", None)):
            raise TypeError(f"levels must have a sample(batch_size, sigmas, *, generator) method, "
                            f"got {type(self.levels).__name__}")
        self.curriculum = make_curriculum(curriculum, total_steps)
        if not isinstance(predefined_levels, bool):
            raise TypeError(f"predefined_levels must be a bool, got {type(predefined_levels).__name__}")
        stages = curriculum_stages(self.curriculum)
        self._starts = [start for start, _ in stages]
        self._counts = [n for _, n in stages]
        self.capacity = max(self._counts)
        self.karras = KarrasLevels(sigma_min, sigma_max, rho,
                                   predefined_max_levels=self.capacity if predefined_levels else None)
        self._tables: Dict[torch.device, LevelTables] = {torch.device("cpu"): self._build_tables()}
        self._views: Dict[Tuple[int, torch.device], Tuple[torch.Tensor, Optional[torch.Tensor]]] = {}
        if device is not None:
            self.tables(device)

    @property
    def fused(self) -> bool:
        """Whether levels are drawn inside the perturbation kernel (an i.i.d. level distribution)."""
        return bool(getattr(self.levels, "iid", False))

    def num_levels(self, step: int) -> int:
        """N at training step ``step``."""
        return self.curriculum.num_levels(step)

    def _build_tables(self) -> LevelTables:
        capacity, cpu, f64 = self.capacity, torch.device("cpu"), torch.float64
        sigma_rows = torch.empty(len(self._counts), capacity, dtype=f64)
        cdf_rows = torch.ones(len(self._counts), capacity - 1, dtype=f64) if self.fused else None
        for row, n in enumerate(self._counts):
            sigmas = self.karras.levels(n, device=cpu, dtype=f64)
            sigma_rows[row, :n] = sigmas
            sigma_rows[row, n:] = sigmas[-1]
            if cdf_rows is not None:
                cdf = self.levels.cdf(sigmas).to(device=cpu, dtype=f64)
                check_level_table(sigmas, cdf)
                # Entry n - 2 is the last interval's: 1, exactly as the kernels' clamp to n - 2 reads it.
                cdf_rows[row, :n - 2] = cdf[:n - 2]
        return LevelTables(torch.tensor(self._starts, dtype=torch.int64), sigma_rows, cdf_rows,
                           torch.tensor(self._counts, dtype=torch.int64))

    def tables(self, device=None) -> LevelTables:
        """The :class:`LevelTables` on ``device`` (default: the default device), copied from the
        CPU's at the first request and kept."""
        device = torch.device(device) if device is not None else torch.get_default_device()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        tables = self._tables.get(device)
        if tables is None:
            tables = self._tables[device] = self._tables[torch.device("cpu")].to(device)
        return tables

    def table(self, step: int, device=None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(sigmas [N] float64, cdf [N-1] float64 or None for a non-i.i.d. sampler) at ``step``:
        views of the stage's rows of :meth:`tables`."""
        tables = self.tables(device)
        stage = self._stage_on_host(step)
        key = (stage, tables.sigmas.device)
        views = self._views.get(key)
        if views is None:
            n = self._counts[stage]
            cdf = None if tables.cdf is None else tables.cdf[stage, :n - 1]
            views = self._views[key] = (tables.sigmas[stage, :n], cdf)
        return views

    def _stage_on_host(self, step: int) -> int:
        return bisect.bisect_right(self._starts, check_int(step, "step", 0)) - 1

    def _stage(self, step: Step, tables: LevelTables) -> Union[int, torch.Tensor]:
        """The stage of ``step``: a Python int in eager mode for a Python int step, else a 0-d
        int64 tensor computed on the tables' device (no host read, nothing for a graph to guard)."""
        if isinstance(step, torch.Tensor):
            check_int_tensor(step, "step")
            if step.device != tables.starts.device and step.device.type != "cpu":
                raise ValueError(f"step is on {step.device} but the level tables are on {tables.starts.device}")
            check_values(step >= 0, "step must be >= 0")
        elif not torch.compiler.is_compiling():
            return self._stage_on_host(step)
        else:
            step = check_int(step, "step", 0)
        # The number of stages that have started by this step, less one (a 0-d CPU step is read as a scalar).
        return (tables.starts <= step).sum() - 1

    def sample(self, x: torch.Tensor, step: Step, *, generator: Optional[torch.Generator] = None) -> ConsistencyBatch:
        """Draw a level pair per sample and the two noisy inputs of ``x`` ([B, ...], float) at ``step``
        (a Python int, or a 0-d integer tensor on x's device or the CPU; steps past ``total_steps``
        keep the last N). Traceable by ``torch.compile(fullgraph=True)`` with the default generator
        (Dynamo cannot trace a ``torch.Generator`` argument): a changing N is data, never a guard."""
        check_float_tensor(x, "x")
        if x.dim() == 0:
            raise ValueError("x must have a batch dimension [B, ...], got a 0-d tensor")
        if is_dtensor(x):
            raise NotImplementedError(DTENSOR_LEVELS_UNSUPPORTED.format(where="ConsistencyNoise.sample"))
        tables = self.tables(x.device)
        stage = self._stage(step, tables)
        sigmas = _row(tables.sigmas, stage)
        if tables.cdf is not None:
            return ConsistencyBatch(*SAMPLED_PAIR_KERNELS.call(x, draw_seed_for(x, generator), sigmas,
                                                               _row(tables.cdf, stage), 0))
        index = self._sample_indices(x.shape[0], sigmas, tables, stage, generator)
        lo, hi = sigmas[index], sigmas[index + 1]
        sigma, sigma_next = lo.to(torch.float32), hi.to(torch.float32)
        # The levels come from the checked tables: the op need not read them back.
        (sig, sig_next), inner = per_sample_arguments(x, {"sigma": sigma, "sigma_next": sigma_next}, nonnegative=())
        x_cur, x_next = PAIR_KERNELS.call(x, draw_seed_for(x, generator), sig, sig_next, inner, 0, True)
        return ConsistencyBatch(x_cur, x_next, sigma, sigma_next, (1.0 / (hi - lo)).to(torch.float32), index)

    def _sample_indices(self, batch_size: int, sigmas: torch.Tensor, tables: LevelTables,
                        stage: Union[int, torch.Tensor], generator) -> torch.Tensor:
        """Interval indices from the level distribution: on the row cut to N for an int stage (eager
        mode: the sampler's own host arithmetic), else on the whole row with N as data."""
        if isinstance(stage, int):
            return self.levels.sample(batch_size, sigmas[:self._counts[stage]], generator=generator)
        if not isinstance(self.levels, LevelDistribution):
            raise TypeError(f"levels {type(self.levels).__name__} is not a schedules.LevelDistribution, so it "
                            "takes N only as the length of its sigmas: give sample() a Python int step, "
                            "outside torch.compile")
        return self.levels.sample(batch_size, sigmas, generator=generator, num_levels=_row(tables.num_levels, stage))

    def __repr__(self) -> str:
        return (f"ConsistencyNoise(levels={self.levels!r}, curriculum={self.curriculum!r}, "
                f"karras={self.karras!r})")
