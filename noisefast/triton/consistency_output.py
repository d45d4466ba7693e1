"""Triton kernels of noisefast_C::consistency_output_forward / consistency_output_backward.

out = c_skip(sigma_b) x + c_out(sigma_b) raw; backward grad_raw = c_out g, grad_x = c_skip g and,
for a sigma that requires grad, per-sample sums of g x and g raw combined with the derivatives of
the scalings. Same math as csrc/cpu/consistency_output_cpu.cpp and the reference. raw, x and grad
arrive sample-blocked with equal strides; the tiling is the pseudo-Huber kernels' (tiling.py: one
program owns ROWS samples x COLS * ITERS elements; P chunks per sample).
"""
import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .rounding import div_rn, sqrt_rn
from .tiling import sample_tiling



@triton.jit
def _scalings(sigma, sd, m):
    """(c_skip, c_out); at sigma = sigma_min exactly (1, 0)."""
    shifted = sigma - m
    return div_rn(sd * sd, shifted * shifted + sd * sd), div_rn(sd * shifted, sqrt_rn(sigma * sigma + sd * sd))


@triton.jit
def _scalings_grad(sigma, sd, m):
    """(d c_skip / d sigma, d c_out / d sigma)."""
    shifted = sigma - m
    skip_denom = shifted * shifted + sd * sd
    norm2 = sigma * sigma + sd * sd
    return (div_rn(-2 * sd * sd * shifted, skip_denom * skip_denom),
            div_rn(sd * (sd * sd + m * sigma), norm2 * sqrt_rn(norm2)))


@triton.jit
def _constants(sd, m, consts_ptr, FROM_PTR: tl.constexpr):
    """(sigma_data, sigma_min) in the math dtype. Python floats reach a kernel as float32, the math
    type of 16/32-bit data; float64 data reads them from a float64 tensor instead
    (f(x, sigma_min) = x needs sigma_min exact)."""
    if FROM_PTR:
        return tl.load(consts_ptr), tl.load(consts_ptr + 1)
    else:
        return tl.cast(sd, tl.float32), tl.cast(m, tl.float32)


@triton.jit
def _sigma_rows(sigma_ptr, rows, row_ok, SHARED: tl.constexpr):
    if SHARED:
        return tl.load(sigma_ptr + rows * 0, mask=row_ok, other=1.0)
    else:
        return tl.load(sigma_ptr + rows, mask=row_ok, other=1.0)


@triton.jit
def _tile(pid, B, D, P, ROWS: tl.constexpr, COLS: tl.constexpr, ITERS: tl.constexpr):
    chunk = pid % P
    rows = (pid // P).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    cols = chunk.to(tl.int64) * (COLS * ITERS) + tl.arange(0, COLS)
    return chunk, rows, rows < B, cols


@triton.jit
def _forward_kernel(raw_ptr, x_ptr, sigma_ptr, sd, m, consts_ptr, out_ptr, B, D, P, SHARED: tl.constexpr,
                    CONSTS_FROM_PTR: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, ITERS: tl.constexpr):
    acc_ty = sigma_ptr.dtype.element_ty
    chunk, rows, row_ok, cols = _tile(tl.program_id(0), B, D, P, ROWS, COLS, ITERS)
    sd, m = _constants(sd, m, consts_ptr, CONSTS_FROM_PTR)
    c_skip, c_out = _scalings(_sigma_rows(sigma_ptr, rows, row_ok, SHARED), sd, m)
    for it in range(ITERS):
        col = cols + it * COLS
        mask = row_ok[:, None] & (col[None, :] < D)
        offs = rows[:, None] * D + col[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        raw = tl.load(raw_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        out = c_skip[:, None] * x + c_out[:, None] * raw
        tl.store(out_ptr + offs, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(grad_ptr, raw_ptr, x_ptr, sigma_ptr, sd, m, consts_ptr, graw_ptr, gx_ptr, sums_ptr,
                     B, D, P, SHARED: tl.constexpr, CONSTS_FROM_PTR: tl.constexpr, WANT_RAW: tl.constexpr,
                     WANT_X: tl.constexpr, WANT_SIGMA: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr,
                     ITERS: tl.constexpr):
    acc_ty = sigma_ptr.dtype.element_ty
    chunk, rows, row_ok, cols = _tile(tl.program_id(0), B, D, P, ROWS, COLS, ITERS)
    sd, m = _constants(sd, m, consts_ptr, CONSTS_FROM_PTR)
    c_skip, c_out = _scalings(_sigma_rows(sigma_ptr, rows, row_ok, SHARED), sd, m)
    sum_gx = tl.zeros([ROWS, COLS], dtype=acc_ty)
    sum_graw = tl.zeros([ROWS, COLS], dtype=acc_ty)
    for it in range(ITERS):
        col = cols + it * COLS
        mask = row_ok[:, None] & (col[None, :] < D)
        offs = rows[:, None] * D + col[None, :]
        g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(acc_ty)
        if WANT_RAW:
            tl.store(graw_ptr + offs, (c_out[:, None] * g).to(graw_ptr.dtype.element_ty), mask=mask)
        if WANT_X:
            tl.store(gx_ptr + offs, (c_skip[:, None] * g).to(gx_ptr.dtype.element_ty), mask=mask)
        if WANT_SIGMA:
            sum_gx += g * tl.load(x_ptr + offs, mask=mask, other=0.0).to(acc_ty)
            sum_graw += g * tl.load(raw_ptr + offs, mask=mask, other=0.0).to(acc_ty)
    if WANT_SIGMA:
        # Two partials per (sample, chunk); the launcher adds the chunks in a fixed order.
        tl.store(sums_ptr + (rows * P + chunk) * 2, tl.sum(sum_gx, axis=1), mask=row_ok)
        tl.store(sums_ptr + (rows * P + chunk) * 2 + 1, tl.sum(sum_graw, axis=1), mask=row_ok)


@triton.jit
def _sigma_grad_kernel(sums_ptr, sigma_ptr, sd, m, consts_ptr, out_ptr, P, SHARED: tl.constexpr,
                       CONSTS_FROM_PTR: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_ty = sigma_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    sd, m = _constants(sd, m, consts_ptr, CONSTS_FROM_PTR)
    if SHARED:
        sigma = tl.load(sigma_ptr)
    else:
        sigma = tl.load(sigma_ptr + row)
    acc_gx = tl.zeros([BLOCK_P], dtype=acc_ty)
    acc_graw = tl.zeros([BLOCK_P], dtype=acc_ty)
    for start in range(0, P, BLOCK_P):
        k = start + tl.arange(0, BLOCK_P)
        acc_gx += tl.load(sums_ptr + (row * P + k) * 2, mask=k < P, other=0.0)
        acc_graw += tl.load(sums_ptr + (row * P + k) * 2 + 1, mask=k < P, other=0.0)
    d_skip, d_out = _scalings_grad(sigma, sd, m)
    tl.store(out_ptr + row, d_skip * tl.sum(acc_gx, axis=0) + d_out * tl.sum(acc_graw, axis=0))


def _constant_args(sigma: torch.Tensor, sigma_data: float, sigma_min: float):
    """(sd, m, consts_ptr, from_ptr) for the kernels: scalars for float32 math, a small float64
    tensor for float64 math, written by two fills (no host-to-device copy, which CUDA-graph capture
    would refuse)."""
    if sigma.dtype == torch.float64:
        consts = torch.full((2,), sigma_data, dtype=torch.float64, device=sigma.device)
        consts[1:].fill_(sigma_min)
        return 0.0, 0.0, consts, True
    return sigma_data, sigma_min, sigma, False


@on_tensor_device
def consistency_output_forward(raw: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor, sigma_data: float,
                               sigma_min: float) -> torch.Tensor:
    out = torch.empty_like(raw)
    if raw.numel() == 0:
        return out
    samples = raw.shape[0]
    elements = raw.numel() // samples
    rows, cols, iters, chunks = sample_tiling(samples, elements)
    sd, m, consts, from_ptr = _constant_args(sigma, sigma_data, sigma_min)
    _forward_kernel[(triton.cdiv(samples, rows) * chunks,)](
        raw, x, sigma, sd, m, consts, out, samples, elements, chunks,
        SHARED=sigma.numel() == 1, CONSTS_FROM_PTR=from_ptr, ROWS=rows, COLS=cols, ITERS=iters)
    return out


@on_tensor_device
def consistency_output_backward(grad, raw, x, sigma, sigma_data, sigma_min, want_raw, want_x, want_sigma):
    empty = raw.new_empty((0,))
    grad_raw = torch.empty_like(raw) if want_raw else empty
    grad_x = torch.empty_like(raw) if want_x else empty
    grad_sigma = torch.zeros_like(sigma) if want_sigma else sigma.new_empty((0,))
    if raw.numel() == 0 or not (want_raw or want_x or want_sigma):
        return grad_raw, grad_x, grad_sigma
    samples = raw.shape[0]
    elements = raw.numel() // samples
    rows, cols, iters, chunks = sample_tiling(samples, elements)
    sd, m, consts, from_ptr = _constant_args(sigma, sigma_data, sigma_min)
    shared = sigma.numel() == 1
    sums = torch.empty((samples * chunks * 2,) if want_sigma else (0,), dtype=sigma.dtype, device=raw.device)
    _backward_kernel[(triton.cdiv(samples, rows) * chunks,)](
        grad, raw, x, sigma, sd, m, consts, grad_raw if want_raw else raw, grad_x if want_x else raw,
        sums if want_sigma else sigma, samples, elements, chunks, SHARED=shared, CONSTS_FROM_PTR=from_ptr,
        WANT_RAW=want_raw, WANT_X=want_x, WANT_SIGMA=want_sigma, ROWS=rows, COLS=cols, ITERS=iters)
    if want_sigma:
        per_sample = torch.empty((samples,), dtype=sigma.dtype, device=raw.device)
        _sigma_grad_kernel[(samples,)](sums, sigma, sd, m, consts, per_sample, chunks, SHARED=shared,
                                       CONSTS_FROM_PTR=from_ptr, BLOCK_P=min(1024, triton.next_power_of_2(chunks)))
        grad_sigma = per_sample.sum().reshape(1) if shared else per_sample
    return grad_raw, grad_x, grad_sigma
