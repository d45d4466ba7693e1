"""noisefast: fused kernels for the noise that training loops inject.

The public API; every name is defined in a submodule and re-exported here.
"""
from ._library import backends, use_backend
from .ops.gaussian_noise import gaussian_noise
from .random import randn
from .regularizers import GaussianNoise

__version__ = "0.1.0"

__all__ = [
    "backends",
    "use_backend",
    "randn",
    "gaussian_noise",
    "GaussianNoise",
]
