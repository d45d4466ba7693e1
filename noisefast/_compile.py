"""Interplay with torch.compile that the package needs in more than one place."""
from __future__ import annotations

import functools

import torch


def eager_under_compile(fn):
    """``torch.compiler.disable(fn)``, resolved at the first call.

    For the stateful helpers (EMA.update, GradientNoise.step, noise-schedule steps) whose counters
    change every call: traced, they would recompile a compiled training step each step; run
    eagerly (a graph break) they never do. Decorating with torch.compiler.disable directly would
    import torch._dynamo when noisefast is imported (~1.5 s); here that happens on first use.
    """
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper
