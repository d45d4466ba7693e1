"""Triton kernels of noisefast_C::pseudo_huber_forward / pseudo_huber_backward.

The same math as csrc/include/noisefast/pseudo_huber.h (the term s / (sqrt(s + c^2) + c), its
derivative e / root with 1/0 taken as 0). Input and target arrive sample-blocked with equal
strides (see noisefast/ops/pseudo_huber.py), so sample b is memory [b*D, (b+1)*D).

Tiling (noisefast/triton/tiling.py, shared with the consistency output): a program owns a tile of
ROWS samples x (COLS * ITERS) elements; a wide sample is cut into P chunks. The forward pass writes
one partial sum per (sample, chunk); a second small kernel adds the partials of each sample in a
fixed order (deterministic, no atomics) and applies the term. When P = 1 the first kernel finishes
the job alone.
"""
import torch
import triton
import triton.language as tl

from .._dtypes import math_dtype
from .device import on_tensor_device
from .rounding import div_rn, sqrt_rn
from .tiling import MAX_ITERS, sample_tiling

FINISH_BLOCK = 1024    # partials read per step by the finishing kernel



@triton.jit
def _term(s, c):
    """sqrt(s + c^2) - c as s / (sqrt(s + c^2) + c); 0 for s = c = 0, inf for s = inf."""
    denom = sqrt_rn(s + c * c) + c
    return tl.where((denom > 0) & (s < float("inf")), div_rn(s, denom), s)


@triton.jit
def _inv_root(root):
    return tl.where(root != 0, div_rn(1.0, root), 0.0)


@triton.jit
def _finish(total, c, D, PER_SAMPLE: tl.constexpr):
    if PER_SAMPLE:
        return _term(total, c)
    else:
        return div_rn(total, tl.cast(D, total.dtype))  # NaN for D = 0: the mean over no elements


@triton.jit
def _load_c(c, c_ptr, C_FROM_PTR: tl.constexpr):
    # Python floats reach a kernel as float32, the math type of 16/32-bit data; float64 data reads
    # c from a float64 tensor instead.
    if C_FROM_PTR:
        return tl.load(c_ptr)
    else:
        return tl.cast(c, tl.float32)


@triton.jit
def _forward_kernel(a_ptr, b_ptr, c, c_ptr, partial_ptr, loss_ptr, B, D, P,
                    PER_SAMPLE: tl.constexpr, FINAL: tl.constexpr, C_FROM_PTR: tl.constexpr,
                    ROWS: tl.constexpr, COLS: tl.constexpr, ITERS: tl.constexpr):
    acc_ty = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
    pid = tl.program_id(0)
    chunk = pid % P
    rows = (pid // P).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    cols = chunk.to(tl.int64) * (COLS * ITERS) + tl.arange(0, COLS)
    cval = _load_c(c, c_ptr, C_FROM_PTR)
    acc = tl.zeros([ROWS, COLS], dtype=acc_ty)
    for it in range(ITERS):
        col = cols + it * COLS
        mask = row_ok[:, None] & (col[None, :] < D)
        offs = rows[:, None] * D + col[None, :]
        # Upcast right after the load (bf16 arithmetic is wrong in the interpreter, and the math
        # is float32 anyway); masked lanes give e = 0, whose term is 0.
        e = (tl.load(a_ptr + offs, mask=mask, other=0.0).to(acc_ty)
             - tl.load(b_ptr + offs, mask=mask, other=0.0).to(acc_ty))
        s = e * e
        if not PER_SAMPLE:
            s = _term(s, cval)
        acc += s
    total = tl.sum(acc, axis=1)
    if FINAL:
        tl.store(loss_ptr + rows, _finish(total, cval, D, PER_SAMPLE), mask=row_ok)
    else:
        tl.store(partial_ptr + rows * P + chunk, total, mask=row_ok)


@triton.jit
def _finish_kernel(partial_ptr, c, c_ptr, loss_ptr, D, P,
                   PER_SAMPLE: tl.constexpr, C_FROM_PTR: tl.constexpr, BLOCK_P: tl.constexpr):
    acc_ty = partial_ptr.dtype.element_ty
    row = tl.program_id(0).to(tl.int64)
    acc = tl.zeros([BLOCK_P], dtype=acc_ty)
    for start in range(0, P, BLOCK_P):
        k = start + tl.arange(0, BLOCK_P)
        acc += tl.load(partial_ptr + row * P + k, mask=k < P, other=0.0)
    total = tl.sum(acc, axis=0)
    tl.store(loss_ptr + row, _finish(total, _load_c(c, c_ptr, C_FROM_PTR), D, PER_SAMPLE))


@triton.jit
def _backward_kernel(a_ptr, b_ptr, grad_ptr, loss_ptr, c, c_ptr, ga_ptr, gb_ptr, B, D, P,
                     PER_SAMPLE: tl.constexpr, WANT_INPUT: tl.constexpr, WANT_TARGET: tl.constexpr,
                     C_FROM_PTR: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, ITERS: tl.constexpr):
    acc_ty = tl.float64 if a_ptr.dtype.element_ty == tl.float64 else tl.float32
    out_ty = a_ptr.dtype.element_ty
    pid = tl.program_id(0)
    chunk = pid % P
    rows = (pid // P).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < B
    cols = chunk.to(tl.int64) * (COLS * ITERS) + tl.arange(0, COLS)
    cval = _load_c(c, c_ptr, C_FROM_PTR)
    g = tl.load(grad_ptr + rows, mask=row_ok, other=0.0).to(acc_ty)
    if PER_SAMPLE:
        # root = sqrt(||e_b||^2 + c^2) = loss_b + c: the saved loss is all the backward needs.
        k = g * _inv_root(tl.load(loss_ptr + rows, mask=row_ok, other=0.0).to(acc_ty) + cval)
    else:
        k = div_rn(g, tl.cast(D, g.dtype))
    for it in range(ITERS):
        col = cols + it * COLS
        mask = row_ok[:, None] & (col[None, :] < D)
        offs = rows[:, None] * D + col[None, :]
        e = (tl.load(a_ptr + offs, mask=mask, other=0.0).to(acc_ty)
             - tl.load(b_ptr + offs, mask=mask, other=0.0).to(acc_ty))
        if PER_SAMPLE:
            grad = k[:, None] * e
        else:
            grad = k[:, None] * (e * _inv_root(sqrt_rn(e * e + cval * cval)))
        if WANT_INPUT:
            tl.store(ga_ptr + offs, grad.to(out_ty), mask=mask)
        if WANT_TARGET:
            tl.store(gb_ptr + offs, (-grad).to(out_ty), mask=mask)


def _c_args(c: float, like: torch.Tensor, acc: torch.dtype):
    if acc == torch.float64:
        return 0.0, torch.full((1,), c, dtype=acc, device=like.device), True
    return c, like, False  # c_ptr is not read: any pointer will do


@on_tensor_device
def pseudo_huber_forward(input: torch.Tensor, target: torch.Tensor, c: float, per_sample: bool) -> torch.Tensor:
    acc = math_dtype(input.dtype)
    samples = input.shape[0]
    loss = torch.empty((samples,), dtype=acc, device=input.device)
    if samples == 0:
        return loss
    elements = input.numel() // samples
    if elements == 0:  # what the kernels would give: a zero norm, or a mean over nothing
        return loss.fill_(0.0 if per_sample else float("nan"))
    # float64 division and square root are subroutine calls on NVIDIA GPUs; per element, inside
    # the ITERS loop, Triton 3.6 spills around them (tests/triton_aot.py): one tile per program.
    max_iters = 1 if acc == torch.float64 and not per_sample else MAX_ITERS
    rows, cols, iters, chunks = sample_tiling(samples, elements, max_iters)
    c_value, c_ptr, c_from_ptr = _c_args(c, loss, acc)
    partial = loss if chunks == 1 else torch.empty((samples * chunks,), dtype=acc, device=input.device)
    grid = (triton.cdiv(samples, rows) * chunks,)
    _forward_kernel[grid](input, target, c_value, c_ptr, partial, loss, samples, elements, chunks,
                          PER_SAMPLE=per_sample, FINAL=chunks == 1, C_FROM_PTR=c_from_ptr,
                          ROWS=rows, COLS=cols, ITERS=iters)
    if chunks > 1:
        _finish_kernel[(samples,)](partial, c_value, c_ptr, loss, elements, chunks, PER_SAMPLE=per_sample,
                                   C_FROM_PTR=c_from_ptr, BLOCK_P=min(FINISH_BLOCK, triton.next_power_of_2(chunks)))
    return loss


@on_tensor_device
def pseudo_huber_backward(grad: torch.Tensor, input: torch.Tensor, target: torch.Tensor, loss: torch.Tensor,
                          c: float, per_sample: bool, want_input: bool, want_target: bool):
    acc = math_dtype(input.dtype)
    empty = input.new_empty((0,))
    grad_input = torch.empty_like(input) if want_input else empty
    grad_target = torch.empty_like(input) if want_target else empty
    samples = input.shape[0]
    if input.numel() == 0 or not (want_input or want_target):
        return grad_input, grad_target
    elements = input.numel() // samples
    rows, cols, iters, chunks = sample_tiling(samples, elements)
    c_value, c_ptr, c_from_ptr = _c_args(c, loss, acc)
    grid = (triton.cdiv(samples, rows) * chunks,)
    _backward_kernel[grid](input, target, grad, loss, c_value, c_ptr,
                           grad_input if want_input else input, grad_target if want_target else input,
                           samples, elements, chunks, PER_SAMPLE=per_sample, WANT_INPUT=want_input,
                           WANT_TARGET=want_target, C_FROM_PTR=c_from_ptr, ROWS=rows, COLS=cols, ITERS=iters)
    return grad_input, grad_target
