"""Argument checks shared by every layer: each error names the user's argument and what was expected.

Numbers (checked on the host, once per call): :func:`check_int`, :func:`check_real`,
:func:`check_nonnegative_number`. Tensors: :func:`check_float_tensor` (type and dtype) and the value
checks :func:`check_nonnegative_values`, :func:`check_finite_values` and :func:`check_values`.

A value check never costs a host synchronisation: CPU values are read on the host in eager mode
(free there) and raise ValueError; values on a GPU, and any values while torch.compile traces, are
checked on the device by ``torch._assert_async`` (no synchronisation, no graph break, captured by
CUDA graphs and checked again at every replay). A failed device-side check is an error at the next
synchronisation: a RuntimeError with the message on the CPU, a device-side assertion on CUDA.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

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


def read_on_host(t: torch.Tensor) -> bool:
    """Whether a value check reads ``t`` on the host: eager mode on the CPU, where reading is free.
    Elsewhere (a GPU, a meta tensor, or torch.compile tracing) checks run on the device
    (:func:`check_values`)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def check_values(ok: torch.Tensor, message: str) -> None:
    """ValueError(message) unless the one-element bool tensor ``ok`` is true.

    Read on the host where that is free (:func:`read_on_host`); else ``torch._assert_async``: a
    device-side check that neither synchronises nor breaks a compiled graph (module docstring).
    """
    if read_on_host(ok):
        if not bool(ok):
            raise ValueError(message)
    else:
        torch._assert_async(ok, message)


# A CPU tensor up to this many elements is checked in Python on its values (one tolist, ~1 us),
# not by tensor ops (isfinite, a comparison, any, a bool: ~10-40 us for a 0-d tensor).
_HOST_CHECK_NUMEL = 4096


def _host_values(t: torch.Tensor):
    """t's values as Python floats when it is a small CPU tensor, else None."""
    if t.is_cpu and t.numel() <= _HOST_CHECK_NUMEL:
        dim = t.dim()
        return [t.item()] if dim == 0 else t.tolist() if dim == 1 else t.reshape(-1).tolist()
    return None


def _first_bad(t: torch.Tensor, bad: torch.Tensor) -> float:
    return t.reshape(-1)[bad.reshape(-1).nonzero()[0, 0]].item()


def _check_elements(t: torch.Tensor, good: Callable[[float], bool], bad: Callable[[torch.Tensor], torch.Tensor],
                    message: str) -> None:
    """ValueError(message, naming the first bad value) if ``bad(t)`` holds a True: on the host for
    CPU values in eager mode (small tensors by ``good`` on their Python values), else on the device."""
    if not read_on_host(t):
        torch._assert_async(~bad(t).any(), message)
        return
    values = _host_values(t)
    if values is not None:
        for v in values:
            if not good(v):
                raise ValueError(f"{message}, found {v}")
        return
    mask = bad(t)
    if bool(mask.any()):
        raise ValueError(f"{message}, found {_first_bad(t, mask)}")


def check_nonnegative_values(t: torch.Tensor, name: str) -> None:
    """Raise ValueError if ``t`` holds a negative or non-finite value (naming the first one).

    Call from inside an op's implementation, where the values exist even under torch.compile. CPU
    values are read on the host; values on a GPU are checked on the device (module docstring).
    """
    if t.numel() == 0:
        return
    _check_elements(t, lambda v: 0.0 <= v < math.inf, lambda t: ~torch.isfinite(t) | (t < 0),  # NaN fails both
                    f"{name} must be finite and >= 0 everywhere")


def check_finite_values(t: torch.Tensor, name: str) -> None:
    """ValueError if ``t`` holds NaN or an infinity (any sign is fine: alpha may be negative).

    Like :func:`check_nonnegative_values`, called inside the ops' implementations.
    """
    if t.numel() == 0:
        return
    _check_elements(t, math.isfinite, lambda t: ~torch.isfinite(t), f"{name} must be finite everywhere")


def check_int_tensor(t: torch.Tensor, name: str) -> None:
    """TypeError unless ``t`` is a 0-d integer tensor (a count or a step given as data)."""
    if t.dim() != 0 or t.dtype.is_floating_point or t.dtype.is_complex or t.dtype == torch.bool:
        raise TypeError(f"{name} must be an int or a 0-d integer tensor, got a {t.dtype} tensor of shape "
                        f"{tuple(t.shape)}")


def check_num_levels(num_levels, capacity: int, device: torch.device):
    """``num_levels`` of a table of ``capacity`` entries on ``device``: an int in [2, capacity], or a
    0-d integer tensor on ``device`` whose value is checked by :func:`check_values`."""
    if isinstance(num_levels, torch.Tensor):
        check_int_tensor(num_levels, "num_levels")
        if num_levels.device != device:
            raise ValueError(f"num_levels is on {num_levels.device} but the table is on {device}")
        check_values((num_levels >= 2) & (num_levels <= capacity),
                     f"num_levels must be in [2, {capacity}] (the table's capacity)")
        return num_levels
    num_levels = check_int(num_levels, "num_levels", 2)
    if num_levels > capacity:
        raise ValueError(f"num_levels must be <= {capacity} (the table's capacity), got {num_levels}")
    return num_levels
