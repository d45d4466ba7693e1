"""The eager PyTorch specification of every noisefast op.

Short, obviously correct code: the tests' oracle, the benchmarks' "eager" baseline, and the
fallback when a compiled kernel is missing. One module per concern:
``random`` (the portable noise stream), ``noise`` (noise injection), ``list_noise`` (noise added
to lists of tensors: gradients, weights), ``targets`` (mixup's row mixing), ``perturbation`` (inputs
of diffusion and consistency training), ``loss`` (the pseudo-Huber loss, the consistency
parameterisation), ``ema`` (weight averaging).
"""
from . import ema, list_noise, loss, noise, perturbation, random, targets  # noqa: F401
