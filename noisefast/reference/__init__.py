"""The eager PyTorch specification of every noisefast op.

Short, obviously correct code: the tests' oracle, the benchmarks' "eager" baseline, and the
fallback when a compiled kernel is missing. One module per concern:
``random`` (the portable noise stream), ``noise`` (noise injection).
"""
from . import noise, random  # noqa: F401
