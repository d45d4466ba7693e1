"""Noise levels, level distributions and curricula for diffusion and consistency training.

Everything here works on tiny tensors (a few thousand elements at most) in float64; the per-element
work of a training step lives in the fused ops. Formulas and constants: docs/formulas.md
sections 1-5 (the sources are named in each docstring).

Contents
- Discrete levels: :func:`karras_sigmas` and :class:`KarrasLevels` (optionally "predefined": every
  N taken from one vector built for the largest N).
- Curricula, the number of levels N over training: :func:`ict_num_levels`, :func:`ct_num_levels`,
  :func:`sinusoidal_num_levels`, the objects :class:`ICTCurriculum`, :class:`CTCurriculum`,
  :class:`SinusoidalCurriculum`, :class:`ConstantCurriculum` and :func:`make_curriculum`; the
  original CT teacher decay :func:`ct_ema_decay`.
- Level distributions over the N-1 intervals (sigma_i, sigma_{i+1}): :func:`lognormal_level_probs`,
  :class:`LogNormalLevels`, :class:`PolynomialLevels`, :class:`UniformLevels`. They return interval
  indices i in [0, N-2]: sigma_i is the target (smaller) level, sigma_{i+1} the student's.
- Continuous sigma samplers: :class:`LogNormal`, :class:`LogUniform`, :class:`LogLogistic`,
  :class:`VDiffusion`, :class:`LaplaceLogSNR`, and ECT's mapping :func:`ect_r_from_t`.
- Magnitude schedules of the noise-injection regularisers, callables ``step -> value``:
  :class:`constant`, :class:`linear`, :class:`polynomial`, :class:`cosine`, :class:`interval`
  (defined in noisefast/magnitude.py).

Randomness: every sampler takes ``generator=None`` and draws with torch's own ops from that
generator (the default generator of the target device when None), so ``torch.manual_seed``
reproduces a run. A generator on another device draws where it lives and the result is moved.

Steps beyond ``total_steps`` are clamped to ``total_steps`` by every curriculum (so a run that goes a
little past its planned length keeps the final N); negative steps raise ValueError.
"""
from __future__ import annotations

import math
import numbers
from collections import OrderedDict
from typing import Callable, Optional, Union

import torch

from ._checks import check_int, check_real
from ._dtypes import FLOAT_DTYPES
from .magnitude import MagnitudeSchedule, constant, cosine, interval, linear, polynomial
from .adaptive_magnitude import adaptive

__all__ = [
    "karras_sigmas", "KarrasLevels",
    "ict_num_levels", "ct_num_levels", "sinusoidal_num_levels", "ct_ema_decay",
    "Curriculum", "ICTCurriculum", "CTCurriculum", "SinusoidalCurriculum", "ConstantCurriculum",
    "make_curriculum",
    "lognormal_level_probs", "index_from_cdf",
    "LevelDistribution", "LogNormalLevels", "PolynomialLevels", "UniformLevels",
    "LogNormal", "LogUniform", "LogLogistic", "VDiffusion", "LaplaceLogSNR", "ect_r_from_t",
    # magnitude schedules of the noise-injection regularisers (defined in magnitude.py)
    "MagnitudeSchedule", "constant", "linear", "polynomial", "cosine", "interval",
    "adaptive",  # driven by a metric (defined in adaptive_magnitude.py)
]

_F64 = torch.float64


# --------------------------------------------------------------------------------------------------
# Argument checks: each error names the argument and what was expected.

def _check_range(low: float, high: float, low_name: str, high_name: str) -> None:
    if not low < high:
        raise ValueError(f"{low_name} must be < {high_name}, got {low_name}={low}, {high_name}={high}")


def _dtype_arg(dtype, name: str = "dtype") -> torch.dtype:
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {dtype}")
    return dtype


def _check_sigmas(sigmas, name: str = "sigmas") -> torch.Tensor:
    """Validate a level vector and return it as float64 (same device)."""
    if not isinstance(sigmas, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(sigmas).__name__}")
    if sigmas.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating-point tensor, got {sigmas.dtype}")
    if sigmas.dim() != 1 or sigmas.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 levels, got shape {tuple(sigmas.shape)}")
    s = sigmas.detach().to(_F64)
    # Reading values on a CUDA device syncs once; skipped while a CUDA graph is captured.
    if not (s.is_cuda and torch.cuda.is_current_stream_capturing()):
        if not bool(torch.isfinite(s).all()) or not bool((s[0] > 0).item()):
            raise ValueError(f"{name} must be finite and > 0")
        if not bool((s[1:] > s[:-1]).all()):
            raise ValueError(f"{name} must be strictly ascending (sigma_0 < sigma_1 < ...)")
    return s


def _default_device(device) -> torch.device:
    return torch.device(device) if device is not None else torch.get_default_device()


def _random(kind: str, size: int, generator: Optional[torch.Generator], device: torch.device,
            high: Optional[int] = None) -> torch.Tensor:
    """float64 uniforms in [0, 1) (kind "rand"), standard normals ("randn") or ints in [0, high)
    ("randint") drawn from ``generator`` (or the default generator of ``device``), on ``device``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    where = device if generator is None else generator.device
    if kind == "randint":
        out = torch.randint(0, high, (size,), generator=generator, device=where, dtype=torch.int64)
    else:
        out = getattr(torch, kind)((size,), generator=generator, device=where, dtype=_F64)
    return out.to(device)


# --------------------------------------------------------------------------------------------------
# Karras levels (EDM, Karras et al. 2022, eq. 5; used by iCT)

def karras_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                  device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The n Karras noise levels, ascending.

    sigma_i = (sigma_min^(1/rho) + i/(n-1) * (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho, i = 0..n-1
    (Karras et al. 2022, "Elucidating the Design Space...", eq. 5). Computed in float64; the ends are
    exactly sigma_min and sigma_max before the cast to ``dtype``.

    Unlike k-diffusion's ``get_sigmas_karras`` the result is ascending with no 0 appended: index i is
    the smaller level of the pair (sigma_i, sigma_{i+1}) that consistency training uses.

    Args:
        n: number of levels (points), >= 2; there are n-1 intervals.
        sigma_min, sigma_max: 0 < sigma_min < sigma_max, finite.
        rho: > 0.
        device: where the result lives (default: the current default device).
        dtype: a floating dtype (default float64).

    Returns:
        Tensor of shape [n].
    """
    n = check_int(n, "n", 2)
    sigma_min = check_real(sigma_min, "sigma_min", positive=True)
    sigma_max = check_real(sigma_max, "sigma_max", positive=True)
    _check_range(sigma_min, sigma_max, "sigma_min", "sigma_max")
    rho = check_real(rho, "rho", positive=True)
    _dtype_arg(dtype)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    ramp = torch.arange(n, dtype=_F64) / (n - 1)
    sigmas = (lo + ramp * (hi - lo)) ** rho
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas.to(device=_default_device(device), dtype=dtype)


class KarrasLevels:
    """Karras levels for a changing N, optionally all taken from one predefined vector.

    ``levels(n)`` returns ``karras_sigmas(n, sigma_min, sigma_max, rho)``. With
    ``predefined_max_levels=M`` it instead builds the M-level Karras vector once and returns, for each
    n <= M, its entries at the evenly spaced indices round(j * (M-1) / (n-1)), j = 0..n-1 (rounded
    half up, computed exactly in integers): both ends are always included and the indices are
    strictly increasing, so the result is a valid ascending level vector.

    This is our reading of the "predefined Karras noises" of Gokmen et al. 2024 ("High Noise
    Scheduling is a Must", arXiv 2404.06353): the paper says one predefined Karras vector keeps new,
    unique levels from appearing as N changes, without giving the selection rule. When (M-1) is a
    multiple of (n-1) (every iCT stage with M = 1281) the subset equals karras_sigmas(n) up to
    rounding; otherwise (e.g. the sinusoidal curriculum) every level is one of the M predefined ones.

    Results are cached per (n, device, dtype) (the last 64); treat returned tensors as read-only.

    Args:
        sigma_min, sigma_max, rho: as :func:`karras_sigmas`.
        predefined_max_levels: None, or the size M >= 2 of the predefined vector (use the
            curriculum's ``max_levels``).
    """

    _CACHE_SIZE = 64

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0, *,
                 predefined_max_levels: Optional[int] = None):
        self.sigma_min = check_real(sigma_min, "sigma_min", positive=True)
        self.sigma_max = check_real(sigma_max, "sigma_max", positive=True)
        _check_range(self.sigma_min, self.sigma_max, "sigma_min", "sigma_max")
        self.rho = check_real(rho, "rho", positive=True)
        self.predefined_max_levels = (None if predefined_max_levels is None
                                      else check_int(predefined_max_levels, "predefined_max_levels", 2))
        self._master = (None if self.predefined_max_levels is None else
                        karras_sigmas(self.predefined_max_levels, self.sigma_min, self.sigma_max,
                                      self.rho, device="cpu"))
        self._cache: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()

    def indices(self, n: int) -> torch.Tensor:
        """Indices into the predefined vector used for n levels (LongTensor [n] on the CPU)."""
        n = check_int(n, "n", 2)
        m = self.predefined_max_levels
        if m is None:
            raise ValueError("indices() needs predefined_max_levels; without it the levels are "
                             "karras_sigmas(n) directly")
        if n > m:
            raise ValueError(f"n must be <= predefined_max_levels={m}, got {n}")
        j = torch.arange(n, dtype=torch.int64)
        return (2 * j * (m - 1) + (n - 1)) // (2 * (n - 1))

    def levels(self, n: int, *, device=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """The n ascending levels (Tensor [n]) on ``device`` (default: the default device)."""
        n = check_int(n, "n", 2)
        _dtype_arg(dtype)
        device = _default_device(device)
        key = (n, str(device), dtype)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        if self._master is None:
            out = karras_sigmas(n, self.sigma_min, self.sigma_max, self.rho, device=device, dtype=dtype)
        else:
            out = self._master[self.indices(n)].to(device=device, dtype=dtype)
        self._cache[key] = out
        if len(self._cache) > self._CACHE_SIZE:
            self._cache.popitem(last=False)
        return out

    __call__ = levels

    def __repr__(self) -> str:
        return (f"KarrasLevels(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, rho={self.rho}, "
                f"predefined_max_levels={self.predefined_max_levels})")


# --------------------------------------------------------------------------------------------------
# Curricula: the number of levels N(k) at training step k

def _check_steps(step, total_steps) -> tuple:
    total_steps = check_int(total_steps, "total_steps", 1)
    step = check_int(step, "step", 0)
    return min(step, total_steps), total_steps


def _check_s0_s1(s0, s1, min_s0: int) -> tuple:
    s0 = check_int(s0, "s0", min_s0)
    s1 = check_int(s1, "s1", s0)
    return s0, s1


def _ict_stage_length(total_steps: int, s0: int, s1: int) -> int:
    # K' = floor(K / (log2(floor(s1/s0)) + 1)) is 0 when K is smaller than the number of stages
    # (8 with the defaults); we treat it as 1, i.e. one step per stage.
    return max(1, math.floor(total_steps / (math.log2(s1 // s0) + 1)))


def ict_num_levels(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """iCT's exponential curriculum (Song & Dhariwal 2023, "Improved Techniques for Training
    Consistency Models", sec. 3.4).

    N(k) = min(s0 * 2^floor(k / K'), s1) + 1 with K' = floor(K / (log2(floor(s1/s0)) + 1)), K the
    total steps. With K = 400000 and the defaults, K' = 50000 and N runs through 11, 21, 41, 81,
    161, 321, 641, 1281. Guard: K' = 0 (K smaller than the number of stages) is treated as K' = 1.
    Steps beyond total_steps are clamped to it.

    Args:
        step: training step k >= 0.  total_steps: K >= 1.  s0 >= 1, s1 >= s0 (ints).

    Returns:
        N as a Python int (>= 2).
    """
    step, total_steps = _check_steps(step, total_steps)
    s0, s1 = _check_s0_s1(s0, s1, 1)
    doublings = step // _ict_stage_length(total_steps, s0, s1)
    # 2^j beyond s1's bit length already exceeds s1: cap j so a huge step never builds a huge int.
    doublings = min(doublings, s1.bit_length())
    return min(s0 << doublings, s1) + 1


def ct_num_levels(step: int, total_steps: int, s0: int = 2, s1: int = 150) -> int:
    """The original consistency-training curriculum (Song et al. 2023, "Consistency Models", appendix C).

    N(k) = ceil(sqrt(k/K * ((s1+1)^2 - s0^2) + s0^2) - 1) + 1, from s0 at k = 0 to s1 + 1 at k = K.
    Evaluated exactly in integer arithmetic (N is the smallest n with n^2 >= the radicand), which
    agrees with openai/consistency_models' float64 evaluation on every step we checked.
    Steps beyond total_steps are clamped to it.

    Args:
        step: k >= 0.  total_steps: K >= 1.  s0 >= 2 (so N >= 2), s1 >= s0 (ints).

    Returns:
        N as a Python int.
    """
    step, total_steps = _check_steps(step, total_steps)
    s0, s1 = _check_s0_s1(s0, s1, 2)
    numerator = step * ((s1 + 1) ** 2 - s0 ** 2) + s0 ** 2 * total_steps  # radicand * K
    root = math.isqrt(numerator // total_steps)
    return root if root * root * total_steps == numerator else root + 1


def sinusoidal_num_levels(step: int, total_steps: int, s0: int = 20, s1: int = 250) -> int:
    """The sinusoidal curriculum of Gokmen et al. 2024 ("High Noise Scheduling is a Must").

    N(k) = ceil(|(s1 - s0) * sin(floor(10 pi (k/K)^1.5) / 10) + s0|): it rises from s0 to s1 (at
    k/K ~ 0.64) and falls back to ~s0 + 0.04 (s1 - s0) at k = K, taking 32 distinct values.
    Steps beyond total_steps are clamped to it.

    Args:
        step: k >= 0.  total_steps: K >= 1.  s0 >= 2 (so N >= 2), s1 >= s0 (ints).

    Returns:
        N as a Python int.
    """
    step, total_steps = _check_steps(step, total_steps)
    s0, s1 = _check_s0_s1(s0, s1, 2)
    return _sinusoidal_at(math.floor(10 * math.pi * (step / total_steps) ** 1.5), s0, s1)


def _sinusoidal_at(phase: int, s0: int, s1: int) -> int:
    return math.ceil(abs((s1 - s0) * math.sin(phase / 10) + s0))


def ct_ema_decay(num_levels: int, s0: int = 2, mu0: float = 0.9) -> float:
    """The teacher EMA decay of original consistency training (Song et al. 2023, appendix C).

    mu(k) = exp(s0 * ln(mu0) / N(k)), the paper's form: mu = mu0 at N = s0. The
    openai/consistency_models code divides by N(k) - 1 instead (0.9025 instead of 0.95 at step 0
    for mu0 = 0.95, s0 = 2); we follow the paper. mu0 = 0.9 for CIFAR-10, 0.95 elsewhere.

    Args:
        num_levels: N >= 1.  s0: > 0.  mu0: in (0, 1].

    Returns:
        The decay as a Python float.
    """
    num_levels = check_int(num_levels, "num_levels", 1)
    s0 = check_real(s0, "s0", positive=True)
    mu0 = check_real(mu0, "mu0", positive=True)
    if mu0 > 1:
        raise ValueError(f"mu0 must be in (0, 1], got {mu0}")
    return math.exp(s0 * math.log(mu0) / num_levels)


class Curriculum:
    """Maps a training step to the number of levels N. Subclasses set ``total_steps`` and implement
    ``num_levels(step) -> int`` and ``max_levels`` (the largest N the run can reach)."""

    total_steps: Optional[int] = None

    def num_levels(self, step: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def max_levels(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, step: int) -> int:
        return self.num_levels(step)


class _FormulaCurriculum(Curriculum):
    """A curriculum given by one of the N(k) functions above, with K, s0 and s1 fixed."""

    _formula: Callable[..., int]  # a staticmethod set by each subclass
    _min_s0 = 1

    def __init__(self, total_steps: int, s0: int, s1: int):
        self.total_steps = check_int(total_steps, "total_steps", 1)
        self.s0, self.s1 = _check_s0_s1(s0, s1, self._min_s0)

    def num_levels(self, step: int) -> int:
        return self._formula(step, self.total_steps, self.s0, self.s1)

    @property
    def max_levels(self) -> int:
        return self.num_levels(self.total_steps)  # right for the curricula whose N(k) never decreases

    def __repr__(self) -> str:
        return f"{type(self).__name__}(total_steps={self.total_steps}, s0={self.s0}, s1={self.s1})"


class ICTCurriculum(_FormulaCurriculum):
    """:func:`ict_num_levels` with ``total_steps`` fixed at construction."""

    _formula = staticmethod(ict_num_levels)

    def __init__(self, total_steps: int, s0: int = 10, s1: int = 1280):
        super().__init__(total_steps, s0, s1)

    @property
    def stage_length(self) -> int:
        """K', the number of steps per doubling (at least 1)."""
        return _ict_stage_length(self.total_steps, self.s0, self.s1)


class CTCurriculum(_FormulaCurriculum):
    """:func:`ct_num_levels` with ``total_steps`` fixed at construction."""

    _formula = staticmethod(ct_num_levels)
    _min_s0 = 2

    def __init__(self, total_steps: int, s0: int = 2, s1: int = 150):
        super().__init__(total_steps, s0, s1)


class SinusoidalCurriculum(_FormulaCurriculum):
    """:func:`sinusoidal_num_levels` with ``total_steps`` fixed at construction."""

    _formula = staticmethod(sinusoidal_num_levels)
    _min_s0 = 2
    # For K >= 48 the phase floor(10 pi (k/K)^1.5) grows by < 1 per step, so it takes every value
    # 0..31; for smaller K the reachable phases are found by walking the steps.
    _ALL_PHASES_FROM = 48

    def __init__(self, total_steps: int, s0: int = 20, s1: int = 250):
        super().__init__(total_steps, s0, s1)

    @property
    def max_levels(self) -> int:
        if self.total_steps < self._ALL_PHASES_FROM:
            return max(self.num_levels(k) for k in range(self.total_steps + 1))
        return max(_sinusoidal_at(p, self.s0, self.s1) for p in range(math.floor(10 * math.pi) + 1))


class ConstantCurriculum(Curriculum):
    """The same N at every step (Gokmen et al.'s constant-N runs, or a fixed discretisation)."""

    def __init__(self, n: int, total_steps: Optional[int] = None):
        self.n = check_int(n, "n", 2)
        self.total_steps = None if total_steps is None else check_int(total_steps, "total_steps", 1)

    def num_levels(self, step: int) -> int:
        check_int(step, "step", 0)
        return self.n

    @property
    def max_levels(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ConstantCurriculum(n={self.n})"


_CURRICULA = {"ict": ICTCurriculum, "ct": CTCurriculum, "sinusoidal": SinusoidalCurriculum}


def make_curriculum(name_or_obj: Union[str, Curriculum], total_steps: Optional[int] = None,
                    **kwargs) -> Curriculum:
    """A curriculum from a name or an existing object.

    Args:
        name_or_obj: "ict" | "ct" | "sinusoidal" (need ``total_steps``; keyword arguments s0, s1),
            "constant" (keyword argument ``n``), or an object with a ``num_levels(step)`` method,
            returned unchanged (then no keyword arguments are allowed).
        total_steps: total training steps K >= 1.
        **kwargs: passed to the curriculum's constructor.
    """
    if not isinstance(name_or_obj, str):
        if not callable(getattr(name_or_obj, "num_levels", None)):
            raise TypeError("curriculum must be 'ict', 'ct', 'sinusoidal', 'constant' or an object with "
                            f"a num_levels(step) method, got {type(name_or_obj).__name__}")
        if kwargs:
            raise ValueError(f"keyword arguments {sorted(kwargs)} cannot be applied to an existing "
                             "curriculum object")
        return name_or_obj
    name = name_or_obj.lower()
    if name == "constant":
        if "n" not in kwargs:
            raise ValueError("curriculum 'constant' needs n=<number of levels>")
        return ConstantCurriculum(total_steps=total_steps, **kwargs)
    if name not in _CURRICULA:
        raise ValueError(f"curriculum must be one of 'ict', 'ct', 'sinusoidal', 'constant', got {name_or_obj!r}")
    if total_steps is None:
        raise ValueError(f"curriculum {name!r} needs total_steps")
    return _CURRICULA[name](total_steps, **kwargs)


# --------------------------------------------------------------------------------------------------
# Discrete level distributions over the intervals (sigma_i, sigma_{i+1}), i = 0..N-2

def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate near 0 and for large |x| (Maechler 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_normal_mass(lo: torch.Tensor, hi: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """log(Phi(hi) - Phi(lo)) for standardised lo < hi (float64), accurate in both tails.

    Intervals in the upper tail are mirrored (Phi(hi) - Phi(lo) = Phi(-lo) - Phi(-hi)) so both
    log-CDFs come from the lower tail, where log_ndtr keeps full relative precision; the difference
    is then taken in log space. When the two log-CDFs agree to 1e-8 (a narrow interval) the midpoint
    rule log(phi(mid) * width) is used instead (relative error < 1e-17 there); ``width`` = hi - lo
    computed without cancellation, since lo and hi themselves may be equal in float64.
    """
    flip = lo > 0
    a = torch.where(flip, -hi, lo)
    b = torch.where(flip, -lo, hi)
    log_a, log_b = torch.special.log_ndtr(a), torch.special.log_ndtr(b)
    diff = log_a - log_b
    exact = log_b + _log1mexp(diff.clamp(max=-1e-300))
    mid = 0.5 * (a + b)
    midpoint = -0.5 * mid * mid - 0.5 * math.log(2 * math.pi) + torch.log(width)
    return torch.where(diff > -1e-8, midpoint, exact)


def lognormal_level_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """iCT's discrete log-normal distribution over the intervals of ``sigmas``.

    p(i) proportional to erf((ln sigma_{i+1} - P_mean) / (sqrt(2) P_std))
    - erf((ln sigma_i - P_mean) / (sqrt(2) P_std)), i = 0..N-2 (Song & Dhariwal 2023, sec. 3.5).
    Computed in float64 as differences of log-CDFs, normalised in log space: no negative, NaN or
    all-zero result for any finite ascending sigmas (N = 1281, sigmas from 1e-300 to 1e300 included),
    where float32/float16 erf differences would cancel or underflow in the tails.
    For N = 11 Karras levels the result is [0.0626, 0.1817, 0.2455, 0.2135, 0.1424, 0.0806, 0.0411,
    0.0196, 0.0089, 0.0040].

    Args:
        sigmas: Tensor [N], N >= 2, finite, > 0, strictly ascending (any float dtype).
        p_mean: P_mean.  p_std: P_std > 0.

    Returns:
        float64 Tensor [N-1] on sigmas' device, summing to 1.
    """
    s = _check_sigmas(sigmas)
    p_mean = check_real(p_mean, "p_mean")
    p_std = check_real(p_std, "p_std", positive=True)
    z = (torch.log(s) - p_mean) / p_std
    width = torch.log1p(torch.diff(s) / s[:-1]) / p_std  # z[i+1] - z[i] without cancellation
    return torch.softmax(_log_normal_mass(z[:-1], z[1:], width), dim=0)


def _cdf_from_probs(probs: torch.Tensor) -> torch.Tensor:
    # Dividing by the last partial sum makes the last entry exactly 1 and keeps every entry <= 1.
    total = torch.cumsum(probs, dim=0)
    return total / total[-1]


def index_from_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: the interval index for uniforms u in [0, 1).

    index = number of entries of ``cdf`` that are <= u (``torch.searchsorted(cdf, u, right=True)``),
    clamped to len(cdf) - 1, so P(index = i) = cdf[i] - cdf[i-1] and intervals of probability 0 are
    never chosen. This is the rule the fused GPU sampler implements.

    Args:
        cdf: float64 Tensor [N-1], non-decreasing, last entry 1 (a sampler's ``.cdf``).
        u: Tensor of uniforms in [0, 1), any shape, same device.

    Returns:
        int64 Tensor shaped like u.
    """
    idx = torch.searchsorted(cdf, u.to(cdf.dtype).contiguous(), right=True)
    return idx.clamp_(max=cdf.numel() - 1)


class LevelDistribution:
    """A distribution over the intervals (sigma_i, sigma_{i+1}) of a level vector.

    ``sample(batch_size, sigmas, *, generator=None)`` returns int64 indices in [0, N-2] on sigmas'
    device; ``probs(sigmas)`` the probability of each interval (float64 [N-1]); ``cdf(sigmas)`` its
    running sum, float64 [N-1] with the last entry exactly 1, for inverse-CDF sampling
    (:func:`index_from_cdf`).

    ``iid`` (alias ``fused``) says whether the indices of a batch are independent and identically
    distributed with these probabilities; only such samplers can be drawn inside the fused
    perturbation kernel by inverse CDF.
    """

    iid: bool = True

    @property
    def fused(self) -> bool:
        """Whether the fused GPU kernel can draw this distribution (same as ``iid``)."""
        return self.iid

    def probs(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def cdf(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """Cumulative probabilities, float64 [N-1] on sigmas' device; the last entry is exactly 1."""
        return _cdf_from_probs(self.probs(sigmas, batch_size=batch_size))

    def sample(self, batch_size: int, sigmas: torch.Tensor, *,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """``batch_size`` i.i.d. indices by inverse CDF (int64 Tensor [batch_size])."""
        batch_size = check_int(batch_size, "batch_size", 0)
        cdf = self.cdf(sigmas)
        return index_from_cdf(cdf, _random("rand", batch_size, generator, cdf.device))


class LogNormalLevels(LevelDistribution):
    """iCT's discrete log-normal distribution (:func:`lognormal_level_probs`), i.i.d. over the batch.

    Defaults P_mean = -1.1, P_std = 2.0 (Song & Dhariwal 2023). Sampling is inverse-CDF on float64
    uniforms (the openai-style ``torch.multinomial`` draws the same distribution).
    """

    iid = True

    def __init__(self, p_mean: float = -1.1, p_std: float = 2.0):
        self.p_mean = check_real(p_mean, "p_mean")
        self.p_std = check_real(p_std, "p_std", positive=True)

    def probs(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """float64 [N-1]; ``batch_size`` is accepted for a uniform interface and ignored."""
        return lognormal_level_probs(sigmas, self.p_mean, self.p_std)

    def __repr__(self) -> str:
        return f"LogNormalLevels(p_mean={self.p_mean}, p_std={self.p_std})"


class UniformLevels(LevelDistribution):
    """Every interval equally likely (original consistency training, Song et al. 2023)."""

    iid = True

    def probs(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """float64 [N-1], all 1/(N-1); ``batch_size`` is ignored."""
        s = _check_sigmas(sigmas)
        return torch.full((s.numel() - 1,), 1.0 / (s.numel() - 1), dtype=_F64, device=s.device)

    def cdf(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """(i+1)/(N-1), i = 0..N-2, float64; the last entry is exactly 1."""
        s = _check_sigmas(sigmas)
        intervals = s.numel() - 1
        return torch.arange(1, intervals + 1, dtype=_F64, device=s.device) / intervals

    def sample(self, batch_size: int, sigmas: torch.Tensor, *,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        batch_size = check_int(batch_size, "batch_size", 0)
        s = _check_sigmas(sigmas)
        return _random("randint", batch_size, generator, s.device, high=s.numel() - 1)

    def __repr__(self) -> str:
        return "UniformLevels()"


class PolynomialLevels(LevelDistribution):
    """The polynomial level distribution of Gokmen et al. 2024 ("High Noise Scheduling is a Must").

    Stratified (``stratified=True``, the first author's public code, mselmangokmen/
    consistency-model-unofficial, run_new_tech_train_step.py, commits fbdb31f and 9e604e9): for batch
    position b = 0..B-1, with t_b = (b/(B-1))^curve * (N-2) and x_b = t_b + n_b,
    n_b ~ Normal(N^(1/5), 1): idx_b = trunc(x_b) when 0 <= x_b < N-2 (the code's half-open test on
    the real value), else idx_b = trunc(t_b) = floor(t_b); the batch is then sorted. B = 1 uses
    t_0 = 0. The indices of one batch are independent but not identically distributed, so this
    sampler is not ``iid`` (not fusable). With ascending levels (index 0 = sigma_min) and curve > 1
    most of the mass is on the low sigmas, as in that code.

    i.i.d. (``stratified=False``): idx = floor(u^curve * (N-1)), u ~ U[0, 1), clamped to N-2. Its
    CDF is cdf[i] = ((i+1)/(N-1))^(1/curve): the same shape, drawable by inverse CDF in the fused
    kernel.

    The paper reports curve = 4; the author's configs also use 2.5 and 3.5.
    """

    def __init__(self, curve: float = 4.0, stratified: bool = True):
        self.curve = check_real(curve, "curve", positive=True)
        if not isinstance(stratified, bool):
            raise TypeError(f"stratified must be a bool, got {type(stratified).__name__}")
        self.stratified = stratified

    @property
    def iid(self) -> bool:
        return not self.stratified

    def _strata(self, batch_size: int, top: int, device) -> torch.Tensor:
        """t_b = (b/(B-1))^curve * (N-2), float64 [B]; the same expression in sample and probs so
        floor(t_b) agrees bit for bit."""
        frac = torch.arange(batch_size, dtype=_F64, device=device) / max(batch_size - 1, 1)
        return frac ** self.curve * top

    def probs(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """Probability of each interval, float64 [N-1].

        i.i.d.: ((i+1)/(N-1))^(1/curve) - (i/(N-1))^(1/curve); ``batch_size`` is ignored.

        Stratified: the expected fraction of a batch of ``batch_size`` (required) that lands in
        interval i, i.e. (1/B) sum_b P(idx_b = i), exact: with x_b = t_b + n_b ~ Normal(mu_b, 1),
        mu_b = t_b + N^(1/5), P(idx_b = i) = Phi(i+1-mu_b) - Phi(i-mu_b) for 0 <= i <= N-3, plus
        the fallback mass Phi(-mu_b) + 1 - Phi(N-2-mu_b) at i = floor(t_b). Sorting does not change
        this.
        """
        s = _check_sigmas(sigmas)
        n = s.numel()
        if not self.stratified:
            cdf = self._iid_cdf(n, s.device)
            return torch.diff(cdf, prepend=torch.zeros(1, dtype=_F64, device=s.device))
        if batch_size is None:
            raise ValueError("batch_size is required for the stratified PolynomialLevels: its "
                             "marginal depends on the batch size")
        batch_size = check_int(batch_size, "batch_size", 1)
        top = n - 2
        strata = self._strata(batch_size, top, s.device)
        mu = strata + n ** 0.2
        edges = torch.arange(0, top + 1, dtype=_F64, device=s.device)  # 0, 1, ..., N-2
        out = torch.zeros(n - 1, dtype=_F64, device=s.device)
        rows = max(1, (1 << 22) // n)  # bound the [rows, N] work array to ~32 MB
        for start in range(0, batch_size, rows):
            m = mu[start:start + rows, None]
            phi = torch.special.ndtr(edges - m)
            out[:top] += torch.diff(phi, dim=1).sum(dim=0)  # x in [i, i+1) for i = 0 .. N-3
            fallback = torch.special.ndtr(-m[:, 0]) + torch.special.ndtr(m[:, 0] - top)
            out.index_add_(0, torch.floor(strata[start:start + rows]).long(), fallback)
        return out / batch_size

    def cdf(self, sigmas: torch.Tensor, batch_size: Optional[int] = None) -> torch.Tensor:
        """Cumulative probabilities, float64 [N-1], last entry exactly 1 (stratified: needs
        ``batch_size``, see :meth:`probs`)."""
        if self.stratified:
            return _cdf_from_probs(self.probs(sigmas, batch_size=batch_size))
        s = _check_sigmas(sigmas)
        return self._iid_cdf(s.numel(), s.device)

    def _iid_cdf(self, n: int, device) -> torch.Tensor:
        # P(floor(u^curve (N-1)) <= i) = P(u < ((i+1)/(N-1))^(1/curve)); the last entry is 1^x = 1.
        ratio = torch.arange(1, n, dtype=_F64, device=device) / (n - 1)
        return ratio ** (1.0 / self.curve)

    def sample(self, batch_size: int, sigmas: torch.Tensor, *,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """int64 Tensor [batch_size] of interval indices (sorted when stratified)."""
        batch_size = check_int(batch_size, "batch_size", 0)
        s = _check_sigmas(sigmas)
        n = s.numel()
        top = n - 2
        if not self.stratified:
            u = _random("rand", batch_size, generator, s.device)
            return torch.floor(u ** self.curve * (n - 1)).long().clamp_(max=top)
        strata = self._strata(batch_size, top, s.device)
        x = strata + _random("randn", batch_size, generator, s.device) + n ** 0.2
        inside = (x >= 0) & (x < top)
        idx = torch.where(inside, torch.trunc(x), torch.floor(strata)).long()
        return torch.sort(idx).values

    def __repr__(self) -> str:
        return f"PolynomialLevels(curve={self.curve}, stratified={self.stratified})"


# --------------------------------------------------------------------------------------------------
# Continuous sigma samplers (EDM, k-diffusion, Hang & Gu 2024); float64 math, cast at the end

class _ContinuousSampler:
    """``sample(batch_size, *, generator=None, device=None, dtype=torch.float32)`` -> Tensor
    [batch_size] of sigmas on ``device`` (default: the generator's device, else the default
    device); ``cdf(sigma)`` -> float64 P(sigma' <= sigma), elementwise."""

    def _sigmas_from(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    _draw = "rand"

    def sample(self, batch_size: int, *, generator: Optional[torch.Generator] = None, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
        batch_size = check_int(batch_size, "batch_size", 0)
        _dtype_arg(dtype)
        if device is None:
            device = generator.device if isinstance(generator, torch.Generator) else None
        device = _default_device(device)
        return self._sigmas_from(_random(self._draw, batch_size, generator, device)).to(dtype)

    def cdf(self, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma).to(_F64)
        # sigma <= 0 has probability 0 (log would give NaN there); NaN input stays NaN.
        return torch.where(sigma <= 0, 0.0, self._cdf(sigma).clamp(0.0, 1.0))


def _truncation_cdfs(cdf, min_value: float, max_value: float) -> tuple:
    """(F(min_value), F(max_value)) of an untruncated float64 CDF, with F(0) = 0 and F(inf) = 1."""
    lo = cdf(torch.tensor(min_value, dtype=_F64)).item() if min_value > 0 else 0.0
    hi = cdf(torch.tensor(max_value, dtype=_F64)).item() if math.isfinite(max_value) else 1.0
    return lo, hi


def _check_bounds(min_value, max_value) -> tuple:
    min_value = check_real(min_value, "min_value", nonnegative=True)
    max_value = check_real(max_value, "max_value", positive=True, allow_inf=True)
    _check_range(min_value, max_value, "min_value", "max_value")
    return min_value, max_value


class LogNormal(_ContinuousSampler):
    """EDM's training distribution: ln sigma ~ Normal(P_mean, P_std^2) (Karras et al. 2022, table 1).

    Defaults (-1.2, 1.2); EDM2 uses (-0.4, 1.0) at 512px and (-0.8, 1.6) at 64px; ECT samples t with
    (-1.1, 2.0). CDF: Phi((ln sigma - P_mean) / P_std).
    """

    _draw = "randn"

    def __init__(self, p_mean: float = -1.2, p_std: float = 1.2):
        self.p_mean = check_real(p_mean, "p_mean")
        self.p_std = check_real(p_std, "p_std", positive=True)

    def _sigmas_from(self, z):
        return torch.exp(self.p_mean + self.p_std * z)

    def _cdf(self, sigma):
        return torch.special.ndtr((torch.log(sigma) - self.p_mean) / self.p_std)

    def __repr__(self) -> str:
        return f"LogNormal(p_mean={self.p_mean}, p_std={self.p_std})"


class LogUniform(_ContinuousSampler):
    """ln sigma ~ Uniform(ln sigma_min, ln sigma_max) (k-diffusion ``rand_log_uniform``).

    CDF: (ln sigma - ln sigma_min) / (ln sigma_max - ln sigma_min) on [sigma_min, sigma_max].
    """

    def __init__(self, sigma_min: float, sigma_max: float):
        self.sigma_min = check_real(sigma_min, "sigma_min", positive=True)
        self.sigma_max = check_real(sigma_max, "sigma_max", positive=True)
        _check_range(self.sigma_min, self.sigma_max, "sigma_min", "sigma_max")
        self._log_min, self._log_max = math.log(self.sigma_min), math.log(self.sigma_max)

    def _sigmas_from(self, u):
        return torch.exp(self._log_min + u * (self._log_max - self._log_min))

    def _cdf(self, sigma):
        return (torch.log(sigma) - self._log_min) / (self._log_max - self._log_min)

    def __repr__(self) -> str:
        return f"LogUniform(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class LogLogistic(_ContinuousSampler):
    """ln sigma ~ Logistic(loc, scale), truncated to [min_value, max_value] through the CDF
    (k-diffusion ``rand_log_logistic``).

    Untruncated CDF F(sigma) = sigmoid((ln sigma - loc) / scale). Sampling: u ~ U[F(min), F(max)),
    sigma = exp(loc + scale * logit(u)), in float64. The truncated CDF is
    (F(sigma) - F(min)) / (F(max) - F(min)), clamped to [0, 1].
    """

    def __init__(self, loc: float, scale: float, min_value: float = 0.0, max_value: float = float("inf")):
        self.loc = check_real(loc, "loc")
        self.scale = check_real(scale, "scale", positive=True)
        self.min_value, self.max_value = _check_bounds(min_value, max_value)
        self._lo, self._hi = _truncation_cdfs(self._untruncated, self.min_value, self.max_value)
        if not self._hi > self._lo:
            raise ValueError("min_value and max_value leave no probability mass in float64 for "
                             f"loc={self.loc}, scale={self.scale}")

    def _untruncated(self, sigma):
        return torch.sigmoid((torch.log(sigma) - self.loc) / self.scale)

    def _sigmas_from(self, u):
        return torch.exp(self.loc + self.scale * torch.logit(self._lo + u * (self._hi - self._lo)))

    def _cdf(self, sigma):
        return (self._untruncated(sigma) - self._lo) / (self._hi - self._lo)

    def __repr__(self) -> str:
        return (f"LogLogistic(loc={self.loc}, scale={self.scale}, min_value={self.min_value}, "
                f"max_value={self.max_value})")


class VDiffusion(_ContinuousSampler):
    """sigma = sigma_data * tan(u pi / 2), truncated to [min_value, max_value] through the CDF
    (k-diffusion ``rand_v_diffusion``; the cosine schedule of v-diffusion as a sigma distribution).

    Untruncated CDF F(sigma) = (2/pi) atan(sigma / sigma_data) (a half-Cauchy); sampling
    u ~ U[F(min), F(max)), in float64.
    """

    def __init__(self, sigma_data: float = 1.0, min_value: float = 0.0, max_value: float = float("inf")):
        self.sigma_data = check_real(sigma_data, "sigma_data", positive=True)
        self.min_value, self.max_value = _check_bounds(min_value, max_value)
        self._lo, self._hi = _truncation_cdfs(self._untruncated, self.min_value, self.max_value)
        if not self._hi > self._lo:
            raise ValueError("min_value and max_value leave no probability mass in float64 for "
                             f"sigma_data={self.sigma_data}")

    def _untruncated(self, sigma):
        return torch.atan(sigma / self.sigma_data) * (2 / math.pi)

    def _sigmas_from(self, u):
        return torch.tan((self._lo + u * (self._hi - self._lo)) * (math.pi / 2)) * self.sigma_data

    def _cdf(self, sigma):
        return (self._untruncated(sigma) - self._lo) / (self._hi - self._lo)

    def __repr__(self) -> str:
        return f"VDiffusion(sigma_data={self.sigma_data}, min_value={self.min_value}, max_value={self.max_value})"


class LaplaceLogSNR(_ContinuousSampler):
    """Laplace importance sampling in log-SNR (Hang & Gu 2024, "Improved Noise Schedule for
    Diffusion Training").

    lambda = mu - b * sign(0.5 - t) * ln(1 - 2|t - 0.5|), t ~ U(0, 1) (lambda ~ Laplace(mu, b)), and
    for sigma-parameterised (VE/EDM) models sigma = exp(-lambda / 2). t = 0 (probability 2^-53 in
    float64) is moved to 2^-53 so lambda stays finite. CDF: P(sigma' <= sigma) = P(lambda >= -2 ln sigma).
    Defaults mu = 0, b = 0.5.
    """

    def __init__(self, mu: float = 0.0, b: float = 0.5):
        self.mu = check_real(mu, "mu")
        self.b = check_real(b, "b", positive=True)

    def _sigmas_from(self, t):
        t = t.clamp(min=2.0 ** -53)
        log_snr = self.mu - self.b * torch.sign(0.5 - t) * torch.log1p(-2 * (t - 0.5).abs())
        return torch.exp(-0.5 * log_snr)

    def _cdf(self, sigma):
        # 1 - F_Laplace(l) with l = -2 ln sigma: 1 - 0.5 e^{(l-mu)/b} below mu, 0.5 e^{-(l-mu)/b} above.
        d = (-2.0 * torch.log(sigma) - self.mu) / self.b
        return torch.where(d < 0, 1.0 - 0.5 * torch.exp(d.clamp(max=0)), 0.5 * torch.exp(-d.clamp(min=0)))

    def __repr__(self) -> str:
        return f"LaplaceLogSNR(mu={self.mu}, b={self.b})"


def ect_r_from_t(t, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0):
    """ECT's mapping from t to the paired smaller level r (Geng et al. 2024, "Consistency Models Made
    Easy"; locuslab/ect ``t_to_r_sigmoid``).

    r = t * (1 - q^-(stage+1) * (1 + k * sigmoid(-b t))), clamped to >= 0. t is typically drawn
    with ``LogNormal(-1.1, 2.0)``; ``stage`` counts the halvings of dt so far (0, 1, 2, ...).

    Args:
        t: Tensor (any float dtype; the result has the same dtype and shape) or a Python number
            (returns a float).
        stage: int >= 0.  q: > 1.  k: >= 0.  b: >= 0.
    """
    stage = check_int(stage, "stage", 0)
    q = check_real(q, "q", positive=True)
    if q <= 1:
        raise ValueError(f"q must be > 1, got {q}")
    k = check_real(k, "k", nonnegative=True)
    b = check_real(b, "b", nonnegative=True)
    is_tensor = isinstance(t, torch.Tensor)
    if not is_tensor and (isinstance(t, bool) or not isinstance(t, numbers.Real)):
        raise TypeError(f"t must be a tensor or a real number, got {type(t).__name__}")
    t64 = t.to(_F64) if is_tensor else torch.tensor(float(t), dtype=_F64)
    decay = q ** -(stage + 1)
    r = (t64 * (1 - decay * (1 + k * torch.sigmoid(-b * t64)))).clamp(min=0)
    return r.to(t.dtype) if is_tensor else r.item()
