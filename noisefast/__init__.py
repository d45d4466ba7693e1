"""noisefast: fused kernels for the noise that training loops inject.

The public API; every name is defined in a submodule and re-exported here.
"""
from . import plot, schedules
from ._library import backends, use_backend
from .compat.swa import get_ema_multi_avg_fn
from .consistency import ConsistencyBatch, ConsistencyNoise
from .ema import EMA, ema_decay, gamma_to_sigma_rel, power_function_decay, sigma_rel_to_gamma
from .ops.consistency_output import consistency_output, consistency_scalings
from .ops.ema_update import ema_update_, ema_update_multi_
from .ops.perturbation import SampledPair, add_noise, consistency_pair, sampled_consistency_pair
from .ops.pseudo_huber import pseudo_huber_loss
from .ops.gaussian_noise import gaussian_noise
from .ops.randn import randn
from .ops.foreach_gaussian_noise import add_noise_, foreach_gaussian_noise, foreach_gaussian_noise_
from .gradient_noise import GradientNoise
from .weight_noise import WeightNoise, weights_only
from .posthoc_ema import PostHocEMA, posthoc_coefficients, power_function_weights
from .regularizers import GaussianNoise, ScheduledNoise, set_noise_step
from .robustness import RobustnessCurve, robustness_curve
from .robustness_tracker import RobustnessRecord, RobustnessTracker
from .targets import MixupBatch, mixup, smooth_labels
from .schedules import (
    ConstantCurriculum,
    CTCurriculum,
    ICTCurriculum,
    KarrasLevels,
    LaplaceLogSNR,
    LogLogistic,
    LogNormal,
    LogNormalLevels,
    LogUniform,
    PolynomialLevels,
    SinusoidalCurriculum,
    UniformLevels,
    VDiffusion,
    ct_ema_decay,
    ct_num_levels,
    ect_r_from_t,
    ict_num_levels,
    index_from_cdf,
    karras_sigmas,
    lognormal_level_probs,
    make_curriculum,
    sinusoidal_num_levels,
)

__version__ = "0.1.0"

__all__ = [
    "backends",
    "use_backend",
    "randn",
    # noise injection
    "gaussian_noise",
    "GaussianNoise",
    "foreach_gaussian_noise_",
    "foreach_gaussian_noise",
    "add_noise_",  # deprecated name of foreach_gaussian_noise_
    "GradientNoise",
    "WeightNoise",
    "weights_only",
    "ScheduledNoise",
    "set_noise_step",
    "smooth_labels",
    "mixup",
    "MixupBatch",
    "robustness_curve",
    "RobustnessCurve",
    "RobustnessTracker",
    "RobustnessRecord",
    # perturbation
    "consistency_pair",
    "add_noise",
    "ConsistencyNoise",
    "ConsistencyBatch",
    "sampled_consistency_pair",
    "SampledPair",
    # consistency loss and parameterisation
    "pseudo_huber_loss",
    "consistency_output",
    "consistency_scalings",
    # EMA
    "ema_update_",
    "ema_update_multi_",
    "EMA",
    "ema_decay",
    "sigma_rel_to_gamma",
    "gamma_to_sigma_rel",
    "power_function_decay",
    "get_ema_multi_avg_fn",
    "PostHocEMA",
    "posthoc_coefficients",
    "power_function_weights",
    # noise levels, level distributions, curricula
    "karras_sigmas",
    "KarrasLevels",
    "ict_num_levels",
    "ct_num_levels",
    "sinusoidal_num_levels",
    "ct_ema_decay",
    "lognormal_level_probs",
    "index_from_cdf",
    "LogNormalLevels",
    "PolynomialLevels",
    "UniformLevels",
    "LogNormal",
    "LogUniform",
    "LogLogistic",
    "VDiffusion",
    "LaplaceLogSNR",
    "ect_r_from_t",
    "ICTCurriculum",
    "CTCurriculum",
    "SinusoidalCurriculum",
    "ConstantCurriculum",
    "make_curriculum",
    "plot",
    "schedules",
]
