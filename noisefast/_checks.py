"""Argument checks shared by every layer: each error names the user's argument and what was expected.

Numbers (checked on the host, once per call): :func:`check_int`, :func:`check_real`,
:func:`check_nonnegative_number`. Tensors: :func:`check_float_tensor` (type and dtype) and the value
checks :func:`check_nonnegative_values`, :func:`check_finite_values`, which read the tensor on the
host and so run inside an op's implementation, where values exist even under torch.compile.
"""
from __future__ import annotations

import math
import numbers

import torch

from ._dtypes import FLOAT_DTYPES


def check_float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_int(value, name: str, minimum: int) -> int:
    """A Python int (not a bool) >= minimum, or a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_real(value, name: str, *, positive: bool = False, nonnegative: bool = False,
               allow_inf: bool = False) -> float:
    """A Python real number (not a bool) as float: finite (or +-inf with ``allow_inf``; never NaN),
    and > 0 with ``positive``, >= 0 with ``nonnegative``; else a TypeError/ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if nonnegative and not value >= 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def check_nonnegative_number(value, name: str) -> float:
    """A Python real number that is finite and >= 0, returned as float: an op argument that may
    also be given as a tensor (whose values the op checks itself)."""
    if type(value) is float and 0.0 <= value < math.inf:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or a tensor, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")
    return value


def values_checkable(t: torch.Tensor) -> bool:
    """Whether the values of ``t`` may be read on the host now: not for a meta tensor (it has none),
    not while a CUDA graph is captured."""
    return not t.is_meta and not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _first_bad(t: torch.Tensor, bad: torch.Tensor) -> float:
    return t.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]].item()


# A CPU tensor up to this many elements is checked in Python on its values (one tolist, ~1 us),
# not by tensor ops (isfinite, a comparison, any, a bool: ~10-40 us for a 0-d tensor).
_HOST_CHECK_NUMEL = 4096


def _host_values(t: torch.Tensor):
    """t's values as Python floats when it is a small CPU tensor, else None."""
    if t.is_cpu and t.numel() <= _HOST_CHECK_NUMEL:
        dim = t.dim()
        return [t.item()] if dim == 0 else t.tolist() if dim == 1 else t.reshape(-1).tolist()
    return None


def check_nonnegative_values(t: torch.Tensor, name: str) -> None:
    """Raise ValueError if ``t`` holds a negative or non-finite value (reads t on the host).

    Call from inside an op's implementation, where the values exist even under torch.compile.
    Skipped while a CUDA graph is being captured, when reading would break the capture.
    """
    if t.is_cpu and t.numel() == 1:  # the common one-value CPU tensor, in one read
        value = t.item()
        if not 0.0 <= value < math.inf:  # False for NaN
            raise ValueError(f"{name} must be finite and >= 0 everywhere, found {value}")
        return
    if t.numel() == 0 or not values_checkable(t):
        return
    values = _host_values(t)
    if values is not None:
        for v in values:
            if not 0.0 <= v < math.inf:  # False for NaN
                raise ValueError(f"{name} must be finite and >= 0 everywhere, found {v}")
        return
    bad = ~torch.isfinite(t) | (t < 0)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and >= 0 everywhere, found {_first_bad(t, bad)}")


def check_finite_values(t: torch.Tensor, name: str) -> None:
    """ValueError if ``t`` holds NaN or an infinity (any sign is fine: alpha may be negative).

    Like :func:`check_nonnegative_values`, called inside the ops' implementations and skipped
    during CUDA-graph capture.
    """
    if t.numel() == 0 or not values_checkable(t):
        return
    values = _host_values(t)
    if values is not None:
        for v in values:
            if not math.isfinite(v):
                raise ValueError(f"{name} must be finite everywhere, found {v}")
        return
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite everywhere, found {_first_bad(t, bad)}")
