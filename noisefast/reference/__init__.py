"""The eager PyTorch specification of every noisefast op.

Short, obviously correct code: the tests' oracle, the benchmarks' "eager" baseline, and the
fallback when a compiled kernel is missing. One module per op family, named like the op's files in
noisefast/ops/, noisefast/triton/ and csrc/: ``randn``, ``gaussian_noise``,
``foreach_gaussian_noise``, ``perturbation`` (consistency_pair, add_noise,
sampled_consistency_pair), ``pseudo_huber``, ``consistency_output``, ``mix_rows``, ``ema_update``;
beside them ``philox`` (the portable noise stream every other reference draws from) and ``targets``
(label smoothing, which has no kernel).

The reference imports nothing from noisefast.ops or noisefast.triton: it is the specification
they are tested against.
"""
from . import (consistency_output, ema_update, foreach_gaussian_noise, gaussian_noise, mix_rows,  # noqa: F401
               perturbation, philox, pseudo_huber, randn, targets)
