"""Reference of the multi-tensor Gaussian noise ops ``foreach_gaussian_noise_`` (in place) and
``foreach_gaussian_noise`` (out of place): the eager specification of
csrc/cpu/foreach_gaussian_noise_cpu.cpp and csrc/cuda/foreach_gaussian_noise.cu, with the checks of
csrc/ops/foreach_gaussian_noise.cpp.

Noise stream of one call (one seed): element j (row-major logical order) of tensor k receives
element ``base_k + j`` of normal stream STREAM_NOISE, ``base_k = sum_{i<k} round_up(numel_i, 4)``.
So each Philox block serves one tensor, and a one-tensor list gets exactly the noise of
``gaussian_noise`` under the same seed.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from .._dtypes import math_dtype
from .._list_operands import check_noise_operands, check_std_operands, check_std_value
from ..random import STREAM_NOISE
from .philox import normal_stream


def stream_bases(numels: Sequence[int]) -> List[int]:
    """First stream element of each tensor: running sums of the sizes rounded up to multiples of 4."""
    bases, base = [], 0
    for n in numels:
        bases.append(base)
        base += (n + 3) // 4 * 4
    return bases


def _footprint(t: torch.Tensor):
    extent = 1 + sum((s - 1) * st for s, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def share_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether a and b share an element (the kernels' rule, csrc/ops/shared_elements.cpp): footprints
    that overlap, then element byte addresses compared (mixed element sizes count as shared)."""
    (a0, a1), (b0, b1) = _footprint(a), _footprint(b)
    if a1 <= b0 or b1 <= a0:
        return False
    if a.element_size() != b.element_size():
        return True
    return bool(torch.isin(_element_addresses(a), _element_addresses(b)).any())


def _element_addresses(t: torch.Tensor) -> torch.Tensor:
    addresses = torch.tensor(t.data_ptr(), dtype=torch.int64, device=t.device)
    for size, stride in zip(t.shape, t.stride()):
        addresses = addresses.unsqueeze(-1) + torch.arange(size, device=t.device) * (stride * t.element_size())
    return addresses.reshape(-1)


def check_operands(tensors: Sequence[torch.Tensor], stds: Sequence[float], std_tensor: Optional[torch.Tensor],
                   in_place: bool) -> List[float]:
    """The kernels' checks, with their messages; returns one std per tensor."""
    n = len(tensors)
    check_std_operands(tensors, stds, std_tensor)
    if std_tensor is not None:
        values = [float(std_tensor.item())] * n
        for s in values[:1]:
            check_std_value(s)
    else:
        values = [float(s) for s in stds]
    check_noise_operands(tensors, in_place)
    if in_place:
        live = [i for i, t in enumerate(tensors) if t.numel() > 0]
        for a in range(len(live)):
            for b in range(a + 1, len(live)):
                if share_memory(tensors[live[a]], tensors[live[b]]):
                    raise ValueError(f"tensors[{live[a]}] and tensors[{live[b]}] share memory: their common "
                                     "elements would receive noise twice")
        if std_tensor is not None and std_tensor.device.type != "cpu":
            for i in live:
                if share_memory(tensors[i], std_tensor):
                    raise ValueError(f"tensors[{i}] and std share memory: std would be read while the tensors "
                                     "are written")
    return values


def noisy_value(t: torch.Tensor, seed: int, base: int, std: float) -> torch.Tensor:
    """t + std * z, z = stream elements base .. base + numel - 1; math in float32 (float64 for
    float64 t) in the order of gaussian_noise's kernels, rounded once to t's dtype."""
    acc = math_dtype(t.dtype)
    if std == 0:
        return t.clone()  # untouched, bit for bit (x + 0 * z would turn -0.0 into +0.0)
    z = normal_stream(t.numel(), seed, STREAM_NOISE, base, device=t.device).to(acc)
    sigma = torch.tensor(std, dtype=acc, device=t.device)
    return (t.reshape(-1).to(acc) + sigma * z).to(t.dtype).view(t.shape)


def foreach_gaussian_noise_(tensors: List[torch.Tensor], seed: torch.Tensor, stds: List[float],
                            std_tensor: Optional[torch.Tensor]) -> None:
    """Kernel-level reference of ``noisefast_C::foreach_gaussian_noise_``: tensors[k] += std_k * z_k
    in place."""
    values = check_operands(tensors, stds, std_tensor, in_place=True)
    seed_value = int(seed.reshape(()).item())
    for t, base, std in zip(tensors, stream_bases([t.numel() for t in tensors]), values):
        if t.numel() and std != 0:
            t.copy_(noisy_value(t, seed_value, base, std))


def foreach_gaussian_noise(tensors: List[torch.Tensor], seed: torch.Tensor, stds: List[float],
                           std_tensor: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Kernel-level reference of ``noisefast_C::foreach_gaussian_noise``: new contiguous
    tensors[k] + std_k * z_k."""
    values = check_operands(tensors, stds, std_tensor, in_place=False)
    seed_value = int(seed.reshape(()).item())
    return [noisy_value(t, seed_value, base, std).contiguous()
            for t, base, std in zip(tensors, stream_bases([t.numel() for t in tensors]), values)]
