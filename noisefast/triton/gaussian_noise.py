"""Triton kernel of noisefast_C::gaussian_noise: out = x + std * scale[(i // inner) % period] * z_i.

z_i is element offset + (i // segment) * stride + i % segment of the noise stream
(csrc/include/noisefast/stream_map.h): consecutive elements from 0, four per Philox call (the public
ops' case), or any other positions (a DTensor shard's global indices, a nonzero offset) one
Philox call per element (``philox.normal_at``, the same bits).
"""
import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .interpreter import finish_output, kernel_output
from .philox import interleave4, normal4, normal_at

BLOCKS_PER_PROGRAM = 256  # Philox blocks per program: 1024 elements


@triton.jit
def _gaussian_noise_kernel(x_ptr, out_ptr, seed_ptr, n, std, scale_ptr, period, inner, offset, segment, stride,
                           HAS_SCALE: tl.constexpr, MAPPED: tl.constexpr, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    pid = tl.program_id(0).to(tl.int64)
    i = pid * (4 * BLOCKS) + tl.arange(0, 4 * BLOCKS)
    mask = i < n
    if MAPPED:
        z = normal_at(seed, 0, offset + (i // segment) * stride + i % segment)
    else:
        z0, z1, z2, z3 = normal4(seed, 0, pid * BLOCKS + tl.arange(0, BLOCKS))
        z = interleave4(z0, z1, z2, z3)
    # Math in float32 (float64 for float64 data), whatever the storage dtype.
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(acc_ty)
    sigma = tl.cast(std, acc_ty)  # a float32 kernel argument (a Python float in the interpreter)
    if HAS_SCALE:
        sigma = sigma * tl.load(scale_ptr + (i // inner) % period, mask=mask, other=0.0).to(acc_ty)
    out = x + sigma * z.to(acc_ty)
    tl.store(out_ptr + i, out.to(out_ptr.dtype.element_ty), mask=mask)


@on_tensor_device
def gaussian_noise(x: torch.Tensor, seed: torch.Tensor, std: float, scale, inner: int, offset: int, segment: int,
                   stride: int) -> torch.Tensor:
    x = x.contiguous()
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    n = x.numel()
    if n == 0:
        return out
    if x.dtype == torch.float64:
        # Triton passes Python floats as float32; fold std into a float64 scale to keep its bits.
        scale = (torch.ones(1, dtype=torch.float64, device=x.device) if scale is None
                 else scale.to(torch.float64).contiguous())
        scale, std = std * scale, 1.0
    elif scale is not None:
        scale = scale.to(torch.float32).contiguous()
    grid = (triton.cdiv(n, 4 * BLOCKS_PER_PROGRAM),)
    written = kernel_output(out)
    _gaussian_noise_kernel[grid](
        x, written, seed, n, std, scale if scale is not None else x,
        scale.numel() if scale is not None else 1, inner, offset, segment, stride,
        HAS_SCALE=scale is not None, MAPPED=offset != 0 or segment != stride, BLOCKS=BLOCKS_PER_PROGRAM)
    return finish_output(out, written)
