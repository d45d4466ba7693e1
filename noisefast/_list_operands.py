"""The operand checks of the in-place list ops (``ema_update_``, ``ema_update_multi_``,
``foreach_gaussian_noise_``) that read no tensor data: counts, dtypes, devices, shapes, internal
overlap, inference tensors. They are the checks of the C++ kernels (csrc/ops/ema_update.cpp,
csrc/ops/foreach_gaussian_noise.cpp), with the same messages, written once in Python for the two
places that need them without the kernels: the reference backend (which adds the checks that read
data: values of a decay or std tensor, elements shared between operands) and the ops' fake
kernels, so that meta and fake tensors raise for bad operands as torch's meta kernels do.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from ._dtypes import FLOAT_DTYPES


def shadow_name(multi: bool, p: int, i: int) -> str:
    """The user's name of shadow p of tensor i: ema_lists[p][i] or ema_tensors[i]."""
    return f"ema_lists[{p}][{i}]" if multi else f"ema_tensors[{i}]"


def check_not_inference(t: torch.Tensor, name: str) -> None:
    """RuntimeError for an inference tensor written in place outside inference mode (torch's
    in-place ops raise the same; csrc/ops/torch_checks.h: check_not_inference)."""
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{name} is an inference tensor: in-place update outside InferenceMode is not allowed "
                           "(clone it first, as for torch's in-place ops)")


def has_internal_overlap(t: torch.Tensor) -> bool:
    """Whether t's strides map two elements to one address (an expanded tensor: stride 0); an
    empty tensor has no elements to share (at::has_internal_overlap agrees)."""
    return t.numel() > 0 and any(st == 0 and s > 1 for s, st in zip(t.shape, t.stride()))


def pairing_supported(shadow_dtype: torch.dtype, weight_dtype: torch.dtype) -> bool:
    """A shadow has its weight's dtype, or is float32 for a float16/bfloat16 weight."""
    if shadow_dtype not in FLOAT_DTYPES or weight_dtype not in FLOAT_DTYPES:
        return False
    return shadow_dtype == weight_dtype or (
        shadow_dtype == torch.float32 and weight_dtype in (torch.float16, torch.bfloat16))


def check_decay_tensor(decay_tensor: torch.Tensor, multi: bool) -> None:
    name = "decays" if multi else "decay"
    if decay_tensor.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} must be a float32 or float64 tensor, got {decay_tensor.dtype}")
    if decay_tensor.dim() != (1 if multi else 0):
        raise ValueError(f"{name} must be a {'1-d' if multi else '0-d'} tensor, got shape "
                         f"{tuple(decay_tensor.shape)}")


def check_ema_operands(emas: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], profiles: int,
                       multi: bool) -> None:
    """Shadows ``emas`` (flattened profile-major) against their weights ``tensors``."""
    n = len(tensors)
    if len(emas) != profiles * n:
        raise ValueError(f"{'ema_lists' if multi else 'ema_tensors'} holds the wrong number of tensors "
                         f"for {n} tensors and {profiles} decays")
    for i, x in enumerate(tensors):
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}] must be float32, float16, bfloat16 or float64, got {x.dtype}")
        if x.device != tensors[0].device:
            raise ValueError(f"tensors[{i}] is on {x.device} but tensors[0] is on {tensors[0].device}")
        for p in range(profiles):
            e = emas[p * n + i]
            name = shadow_name(multi, p, i)
            if e.device != x.device:
                raise ValueError(f"{name} is on {e.device} but tensors[{i}] is on {x.device}")
            if e.shape != x.shape:
                raise ValueError(f"{name} has shape {tuple(e.shape)} but tensors[{i}] has shape {tuple(x.shape)}")
            if has_internal_overlap(e):
                raise ValueError(f"{name} has elements that share memory (e.g. an expanded tensor): "
                                 "it cannot be updated in place")
            if not pairing_supported(e.dtype, x.dtype):
                raise TypeError(f"{name} is {e.dtype} but tensors[{i}] is {x.dtype}: a shadow must have its "
                                "weight's dtype, or be float32 for float16/bfloat16 weights")
            if e.dtype != emas[i].dtype:
                raise ValueError(f"{name} is {e.dtype} but {shadow_name(multi, 0, i)} is {emas[i].dtype}: "
                                 "the profiles of one tensor must share a dtype")
    for k, e in enumerate(emas):
        check_not_inference(e, shadow_name(multi, k // n, k % n))


def check_noise_operands(tensors: Sequence[torch.Tensor], in_place: bool) -> None:
    """The tensors of a foreach_gaussian_noise call: dense float tensors on one device; written in
    place, none expanded and none an inference tensor (outside inference mode)."""
    for i, t in enumerate(tensors):
        if t.layout != torch.strided:
            raise TypeError(f"tensors[{i}] must be a dense (strided) tensor, got {t.layout}")
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"tensors[{i}] must be float32, float16, bfloat16 or float64, got {t.dtype}")
        if t.device != tensors[0].device:
            raise ValueError(f"tensors[{i}] is on {t.device} but tensors[0] is on {tensors[0].device}")
        if in_place and has_internal_overlap(t):
            raise ValueError(f"tensors[{i}] has elements that share memory (e.g. an expanded tensor): "
                             "it cannot be updated in place")
    if in_place:
        for i, t in enumerate(tensors):
            check_not_inference(t, f"tensors[{i}]")


def check_std_operands(tensors: Sequence[torch.Tensor], stds: Sequence[float],
                       std_tensor: Optional[torch.Tensor]) -> None:
    """The std of a foreach_gaussian_noise call: numbers (one per tensor, finite and >= 0) or a 0-d
    float32/float64 tensor on the tensors' device or the CPU (its value is checked by whoever reads it)."""
    n = len(tensors)
    if std_tensor is not None:
        if stds:
            raise ValueError("pass std as numbers or as a tensor, not both")
        if std_tensor.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"std must be a float32 or float64 tensor, got {std_tensor.dtype}")
        if std_tensor.dim() != 0:
            raise ValueError(f"std must be a 0-d tensor, got shape {tuple(std_tensor.shape)}")
        if n and std_tensor.device.type != "cpu" and std_tensor.device != tensors[0].device:
            raise ValueError(f"std is on {std_tensor.device} but the tensors are on {tensors[0].device}")
        return
    if len(stds) != n:
        raise ValueError(f"std has {len(stds)} values for {n} tensors")
    for i, s in enumerate(stds):
        check_std_value(float(s), f" for tensors[{i}]")


def check_std_value(value: float, where: str = "") -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"std must be finite and >= 0, got {value}{where}")


def check_decays(decays: Sequence[float], decay_tensor: Optional[torch.Tensor], multi: bool) -> int:
    """The decays of an EMA update, without reading a decay tensor: numbers in [0, 1], or a
    float32/float64 tensor (0-d, or 1-d for several profiles). Returns the number of profiles."""
    name = "decays" if multi else "decay"
    if decay_tensor is not None:
        if len(decays):
            raise ValueError("pass decays as floats or as a tensor, not both")
        check_decay_tensor(decay_tensor, multi)
        profiles = decay_tensor.numel()
    else:
        profiles = len(decays)
        for d in decays:
            if not 0.0 <= d <= 1.0:  # also rejects NaN
                raise ValueError(f"{name} must be in [0, 1], got {d}")
    if profiles < 1:
        raise ValueError(f"{name} must hold at least one decay")
    return profiles
