"""Triton kernels of the perturbation ops (noisefast_C::consistency_pair, add_noise, perturbation_noise_grad,
sampled_consistency_pair): one pass over x, noise drawn in registers from the portable stream.

Conventions (noisefast/reference/perturbation.py): element i of x draws element offset + i of
each normal stream; per-sample values are indexed by p = i // inner. A program covers 4 * BLOCKS
consecutive elements. When a sample (or an offset-noise row) has at least that many elements, a
program touches at most two of them: it then resolves the two once (their sigma, level or offset
normal) and picks per element with a comparison, instead of a 64-bit division and, for the levels
and offsets, a Philox call and a search per element.
"""
import torch
import triton
import triton.language as tl

from .._dtypes import math_dtype
from ..random import STREAM_LEVELS, STREAM_NOISE, STREAM_OFFSET, STREAM_PERTURBATION
from .device import on_tensor_device
from .levels import level_index, search_steps
from .philox import interleave4, normal4, normal_at

BLOCKS_PER_PROGRAM = 256                     # Philox blocks per program
ELEMENTS_PER_PROGRAM = 4 * BLOCKS_PER_PROGRAM
SAMPLES_PER_PROGRAM = 128                    # per-sample outputs of the sampled pair, per program

_NOISE = tl.constexpr(STREAM_NOISE)
_PERTURBATION = tl.constexpr(STREAM_PERTURBATION)
_OFFSET = tl.constexpr(STREAM_OFFSET)
_LEVELS = tl.constexpr(STREAM_LEVELS)


@triton.jit
def _positions(offset, BLOCKS: tl.constexpr):
    """This program's Philox blocks q, its element indices i (int64; element i takes stream element
    offset + i, so i < 0 in the first program when offset % 4 != 0) and its first i."""
    pid = tl.program_id(0).to(tl.int64)
    first_block = offset // 4
    q = pid * BLOCKS + first_block + tl.arange(0, BLOCKS)
    i_first = pid * (4 * BLOCKS) + (first_block * 4 - offset)
    return q, i_first + tl.arange(0, 4 * BLOCKS), i_first


@triton.jit
def _noise(seed, stream: tl.constexpr, q):
    """Elements 4q .. 4q + 3 of a normal stream, in element order."""
    z0, z1, z2, z3 = normal4(seed, stream, q)
    return interleave4(z0, z1, z2, z3)


@triton.jit
def _row_of(i, i_first, inner, WIDE: tl.constexpr):
    """i // inner, from the program's first row: with WIDE (inner >= the program's element count)
    the row or the next; else the offset from that row in 32-bit division (under 2 * the program's
    elements for every valid i), not a 64-bit division per element."""
    first = tl.maximum(i_first, 0) // inner
    if WIDE:
        return first + (i >= (first + 1) * inner).to(tl.int64)
    else:
        return first + ((i - first * inner).to(tl.int32) // tl.cast(inner, tl.int32)).to(tl.int64)


@triton.jit
def _pick(two, i, first, inner):
    """Per element, entry 0 or 1 of the two-element ``two`` (rows first, first + 1)."""
    lane = tl.arange(0, 2)
    v0 = tl.sum(tl.where(lane == 0, two, 0.0))
    v1 = tl.sum(tl.where(lane == 1, two, 0.0))
    return tl.where(i >= (first + 1) * inner, v1, v0)


@triton.jit
def _store_pair(x_ptr, cur_ptr, next_ptr, i, mask, s0, s1, z):
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    # Cast right after loading: math in float32 (float64), whatever the storage dtype.
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(acc_ty)
    z = z.to(acc_ty)
    tl.store(cur_ptr + i, (x + s0.to(acc_ty) * z).to(cur_ptr.dtype.element_ty), mask=mask)
    tl.store(next_ptr + i, (x + s1.to(acc_ty) * z).to(next_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _consistency_pair_kernel(x_ptr, cur_ptr, next_ptr, seed_ptr, sigma_ptr, sigma_next_ptr, n, inner, offset,
                             WIDE: tl.constexpr, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    q, i, i_first = _positions(offset, BLOCKS)
    mask = (i >= 0) & (i < n)
    p = _row_of(i, i_first, inner, WIDE)
    s0 = tl.load(sigma_ptr + p, mask=mask, other=0.0)
    s1 = tl.load(sigma_next_ptr + p, mask=mask, other=0.0)
    _store_pair(x_ptr, cur_ptr, next_ptr, i, mask, s0, s1, _noise(seed, _NOISE, q))


@triton.jit
def _add_noise_noise(seed, q, i, i_first, gamma, offset_scale, channel_inner, like_ptr, PERTURB: tl.constexpr,
                     OFFSET_NOISE: tl.constexpr, WIDE_ROW: tl.constexpr):
    """(eps, noise) of elements i (Philox blocks q, first element i_first) in the math dtype of
    like_ptr's data: eps = z + offset_scale * o (the target), noise = eps + gamma * xi (what sigma
    multiplies); csrc/include/noisefast/perturbation.h. WIDE_ROW: the elements span at most two
    offset-noise rows."""
    acc_ty = tl.float64 if like_ptr.dtype.element_ty == tl.float64 else tl.float32
    eps = _noise(seed, _NOISE, q).to(acc_ty)
    if OFFSET_NOISE:
        if WIDE_ROW:
            first = tl.maximum(i_first, 0) // channel_inner
            o = _pick(normal_at(seed, _OFFSET, first + tl.arange(0, 2)), i, first, channel_inner)
        else:
            o = normal_at(seed, _OFFSET, _row_of(i, i_first, channel_inner, False))
        eps = eps + offset_scale * o.to(acc_ty)
    noise = eps
    if PERTURB:
        noise = eps + gamma * _noise(seed, _PERTURBATION, q).to(acc_ty)
    return eps, noise


@triton.jit
def _add_noise_kernel(x_ptr, noisy_ptr, target_ptr, seed_ptr, alpha_ptr, sigma_ptr, gamma, offset_scale,
                      params_ptr, n, sample_inner, channel_inner, offset,
                      PERTURB: tl.constexpr, OFFSET_NOISE: tl.constexpr, WIDE_SAMPLE: tl.constexpr,
                      WIDE_ROW: tl.constexpr, PARAMS_IN_MEMORY: tl.constexpr, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    q, i, i_first = _positions(offset, BLOCKS)
    mask = (i >= 0) & (i < n)
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    if PARAMS_IN_MEMORY:  # float64 data: Python floats would reach the kernel as float32
        gamma = tl.load(params_ptr)
        offset_scale = tl.load(params_ptr + 1)
    eps, noise = _add_noise_noise(seed, q, i, i_first, gamma, offset_scale, channel_inner, x_ptr,
                                  PERTURB, OFFSET_NOISE, WIDE_ROW)
    p = _row_of(i, i_first, sample_inner, WIDE_SAMPLE)
    a = tl.load(alpha_ptr + p, mask=mask, other=0.0).to(acc_ty)
    s = tl.load(sigma_ptr + p, mask=mask, other=0.0).to(acc_ty)
    x = tl.load(x_ptr + i, mask=mask, other=0.0).to(acc_ty)
    tl.store(noisy_ptr + i, (a * x + s * noise).to(noisy_ptr.dtype.element_ty), mask=mask)
    tl.store(target_ptr + i, eps.to(target_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _noise_grad_kernel(g0_ptr, g1_ptr, partial_ptr, seed_ptr, gamma, offset_scale, params_ptr, n, sample_inner,
                       channel_inner, offset, chunks, programs, TWO: tl.constexpr, PERTURB: tl.constexpr,
                       OFFSET_NOISE: tl.constexpr, WIDE_ROW: tl.constexpr, PARAMS_IN_MEMORY: tl.constexpr,
                       BLOCKS: tl.constexpr):
    """Program (sample p, chunk c): the sum of g * noise over the elements of sample p that lie in
    Philox blocks c * BLOCKS .. of the sample's blocks, stored at partial[pid] (and g1's at
    partial[programs + pid]); the launcher adds a sample's chunks in order."""
    seed = tl.load(seed_ptr)
    pid = tl.program_id(0).to(tl.int64)
    p = pid // chunks
    row_start = p * sample_inner
    row_end = tl.minimum(row_start + sample_inner, n)
    q0 = (offset + row_start) // 4 + (pid - p * chunks) * BLOCKS
    q = q0 + tl.arange(0, BLOCKS)
    i_first = q0 * 4 - offset
    i = i_first + tl.arange(0, 4 * BLOCKS)
    mask = (i >= row_start) & (i < row_end)
    acc_ty = tl.float64 if g0_ptr.dtype.element_ty == tl.float64 else tl.float32
    if PARAMS_IN_MEMORY:  # float64 data, as in _add_noise_kernel
        gamma = tl.load(params_ptr)
        offset_scale = tl.load(params_ptr + 1)
    _, noise = _add_noise_noise(seed, q, i, i_first, gamma, offset_scale, channel_inner, g0_ptr,
                                PERTURB, OFFSET_NOISE, WIDE_ROW)
    g0 = tl.load(g0_ptr + i, mask=mask, other=0.0).to(acc_ty)
    tl.store(partial_ptr + pid, tl.sum(tl.where(mask, g0 * noise, 0.0), axis=0))
    if TWO:
        g1 = tl.load(g1_ptr + i, mask=mask, other=0.0).to(acc_ty)
        tl.store(partial_ptr + programs + pid, tl.sum(tl.where(mask, g1 * noise, 0.0), axis=0))


@triton.jit
def _sampled_pair_kernel(x_ptr, cur_ptr, next_ptr, seed_ptr, sigmas_ptr, cdf_ptr, m,
                         sigma_ptr, sigma_next_ptr, weight_ptr, index_ptr, n, batch, inner, offset,
                         WIDE: tl.constexpr, STEPS: tl.constexpr, BLOCKS: tl.constexpr, SAMPLES: tl.constexpr):
    seed = tl.load(seed_ptr)
    # The per-sample outputs of samples pid * SAMPLES ... (only the first programs have any) ...
    first_sample = tl.program_id(0).to(tl.int64) * SAMPLES
    if first_sample < batch:
        b = first_sample + tl.arange(0, SAMPLES)
        bmask = b < batch
        index = level_index(seed, _LEVELS, b, cdf_ptr, m, STEPS)
        lo = tl.load(sigmas_ptr + index)  # float64; index is in [0, m - 1] for every lane
        hi = tl.load(sigmas_ptr + index + 1)
        tl.store(sigma_ptr + b, lo.to(tl.float32), mask=bmask)
        tl.store(sigma_next_ptr + b, hi.to(tl.float32), mask=bmask)
        tl.store(weight_ptr + b, (1.0 / (hi - lo)).to(tl.float32), mask=bmask)
        tl.store(index_ptr + b, index, mask=bmask)
    # ... and the elements of the program, each with its sample's level (recomputed, not read back:
    # one launch, no ordering between programs).
    q, i, i_first = _positions(offset, BLOCKS)
    mask = (i >= 0) & (i < n)
    if WIDE:
        first = tl.maximum(i_first, 0) // inner
        two = level_index(seed, _LEVELS, first + tl.arange(0, 2), cdf_ptr, m, STEPS)
        s0 = _pick(tl.load(sigmas_ptr + two).to(tl.float32), i, first, inner)
        s1 = _pick(tl.load(sigmas_ptr + two + 1).to(tl.float32), i, first, inner)
    else:
        index = level_index(seed, _LEVELS, i // inner, cdf_ptr, m, STEPS)
        s0 = tl.load(sigmas_ptr + index).to(tl.float32)
        s1 = tl.load(sigmas_ptr + index + 1).to(tl.float32)
    _store_pair(x_ptr, cur_ptr, next_ptr, i, mask, s0, s1, _noise(seed, _NOISE, q))


# ---- launchers: the kernel-level signatures of noisefast/reference/perturbation.py -------------------

def _num_blocks(n: int, offset: int) -> int:
    return (offset + n - 1) // 4 + 1 - offset // 4


def _outputs(x: torch.Tensor):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            torch.empty_like(x, memory_format=torch.contiguous_format))


@on_tensor_device
def consistency_pair(x, seed, sigma, sigma_next, inner: int, offset: int):
    x = x.contiguous()
    cur, nxt = _outputs(x)
    n = x.numel()
    if n == 0:
        return cur, nxt
    acc = math_dtype(x.dtype)
    sigma, sigma_next = sigma.to(acc).contiguous(), sigma_next.to(acc).contiguous()
    grid = (triton.cdiv(_num_blocks(n, offset), BLOCKS_PER_PROGRAM),)
    _consistency_pair_kernel[grid](x, cur, nxt, seed, sigma, sigma_next, n, inner, offset,
                                   WIDE=inner >= ELEMENTS_PER_PROGRAM, BLOCKS=BLOCKS_PER_PROGRAM)
    return cur, nxt


def _scale_params(input_perturbation: float, offset_noise: float, acc: torch.dtype, device, fallback):
    """(params, in_memory): for float64 math the two scales as a float64 tensor (Python floats would
    reach a kernel as float32), made by two fills: no host-to-device copy (CUDA-graph capture
    refuses those); else ``fallback``, an unused pointer."""
    if acc != torch.float64:
        return fallback, False
    params = torch.full((2,), input_perturbation, dtype=torch.float64, device=device)
    params[1:].fill_(offset_noise)
    return params, True


@on_tensor_device
def add_noise(x, seed, alpha, sigma, input_perturbation: float, offset_noise: float, sample_inner: int,
              channel_inner: int, offset: int):
    x = x.contiguous()
    noisy, target = _outputs(x)
    n = x.numel()
    if n == 0:
        return noisy, target
    acc = math_dtype(x.dtype)
    alpha, sigma = alpha.to(acc).contiguous(), sigma.to(acc).contiguous()
    params, params_in_memory = _scale_params(input_perturbation, offset_noise, acc, x.device, sigma)
    grid = (triton.cdiv(_num_blocks(n, offset), BLOCKS_PER_PROGRAM),)
    _add_noise_kernel[grid](
        x, noisy, target, seed, alpha, sigma, float(input_perturbation), float(offset_noise), params,
        n, sample_inner, channel_inner, offset,
        PERTURB=input_perturbation != 0.0, OFFSET_NOISE=offset_noise != 0.0,
        WIDE_SAMPLE=sample_inner >= ELEMENTS_PER_PROGRAM, WIDE_ROW=channel_inner >= ELEMENTS_PER_PROGRAM,
        PARAMS_IN_MEMORY=params_in_memory, BLOCKS=BLOCKS_PER_PROGRAM,
        # Offset noise draws one more normal per element (per row when rows are WIDE): with four
        # warps (two Philox blocks per thread) that spills registers; eight warps hold one block.
        num_warps=4)
    return noisy, target


@on_tensor_device
def sampled_consistency_pair(x, seed, sigmas, cdf, offset: int):
    x = x.contiguous()
    cur, nxt = _outputs(x)
    batch, n = x.shape[0], x.numel()
    sigma = torch.empty(batch, dtype=torch.float32, device=x.device)
    sigma_next, weight = torch.empty_like(sigma), torch.empty_like(sigma)
    index = torch.empty(batch, dtype=torch.int64, device=x.device)
    if batch == 0:
        return cur, nxt, sigma, sigma_next, weight, index
    sigmas = sigmas.to(torch.float64).contiguous()
    cdf = cdf.to(torch.float64).contiguous()
    m = cdf.numel()
    if m < 1 or sigmas.numel() != m + 1:
        raise ValueError(f"need n >= 2 levels and n - 1 cdf values, got {sigmas.numel()} and {m}")
    inner = max(n // batch, 1)
    programs = max(triton.cdiv(_num_blocks(n, offset), BLOCKS_PER_PROGRAM) if n else 0,
                   triton.cdiv(batch, SAMPLES_PER_PROGRAM))
    _sampled_pair_kernel[(programs,)](
        x, cur, nxt, seed, sigmas, cdf, m, sigma, sigma_next, weight, index, n, batch, inner, offset,
        WIDE=inner >= ELEMENTS_PER_PROGRAM, STEPS=search_steps(m), BLOCKS=BLOCKS_PER_PROGRAM,
        SAMPLES=SAMPLES_PER_PROGRAM)
    return cur, nxt, sigma, sigma_next, weight, index


def _grad_blocks(sample_inner: int) -> int:
    """Philox blocks per program of the sigma gradient: a whole sample when it is small (at least 16
    blocks), else 256 blocks per chunk."""
    return min(BLOCKS_PER_PROGRAM, max(16, triton.next_power_of_2((sample_inner + 3) // 4 + 1)))


@on_tensor_device
def perturbation_noise_grad(grads, seed, input_perturbation: float, offset_noise: float, count: int,
                            sample_inner: int, channel_inner: int, offset: int):
    grads = [g.contiguous() for g in grads]
    n = grads[0].numel()
    acc = math_dtype(grads[0].dtype)
    out = torch.zeros((len(grads), count), dtype=acc, device=grads[0].device)
    if n == 0:
        return out
    rows = (n - 1) // sample_inner + 1
    blocks = _grad_blocks(sample_inner)
    # The Philox blocks a sample's elements span, whatever their alignment: at most this many chunks.
    chunks = triton.cdiv((sample_inner + 3) // 4 + 1, blocks)
    programs = rows * chunks
    partial = torch.empty((len(grads), programs), dtype=acc, device=grads[0].device)
    params, params_in_memory = _scale_params(input_perturbation, offset_noise, acc, grads[0].device, partial)
    _noise_grad_kernel[(programs,)](
        grads[0], grads[-1], partial, seed, float(input_perturbation), float(offset_noise), params, n, sample_inner,
        channel_inner, offset, chunks, programs,
        TWO=len(grads) == 2, PERTURB=input_perturbation != 0.0, OFFSET_NOISE=offset_noise != 0.0,
        WIDE_ROW=channel_inner >= 4 * blocks, PARAMS_IN_MEMORY=params_in_memory, BLOCKS=blocks)
    out[:, :rows] = partial.view(len(grads), rows, chunks).sum(dim=2)
    return out
