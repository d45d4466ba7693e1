"""Triton kernel of noisefast_C::mix_rows: out[b] = lam * x[b] + (1 - lam) * x[index[b]].

Each program covers a tile of ROWS rows x COLS columns of the [B, D] view of x (D = elements per
row), so that long rows (images) are split over programs and short rows (feature vectors) are
packed several to a program. lam is read from device memory (a float64 scalar), which keeps the
op free of host synchronisation and safe under CUDA-graph capture. Same math as
csrc/include/noisefast/mix_rows.h.
"""
import torch
import triton
import triton.language as tl

from .device import on_tensor_device

from .interpreter import INTERPRETING, finish_output

# Elements per program: 8 per thread of the default 4 warps (a row and its partner in flight: 16
# loads per thread). 4096 at 4 warps took 174-225 registers per thread (tests/triton_aot.py).
TILE = 1024


@triton.jit
def _mix_rows_kernel(x_ptr, out_ptr, index_ptr, lam_ptr, rows, cols, col_blocks,
                     ROWS: tl.constexpr, COLS: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    row_block = pid // col_blocks
    col_block = pid - row_block * col_blocks
    r = row_block * ROWS + tl.arange(0, ROWS)
    c = col_block * COLS + tl.arange(0, COLS)
    row_ok = r < rows
    partner = tl.load(index_ptr + r, mask=row_ok, other=0).to(tl.int64)
    mask = row_ok[:, None] & (c < cols)[None, :]
    acc_ty = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32
    lam = tl.load(lam_ptr)  # float64: both weights formed in float64, each rounded once
    w_self = lam.to(acc_ty)
    w_partner = (1.0 - lam).to(acc_ty)
    a = tl.load(x_ptr + (r * cols)[:, None] + c[None, :], mask=mask, other=0.0).to(acc_ty)
    p = tl.load(x_ptr + (partner * cols)[:, None] + c[None, :], mask=mask, other=0.0).to(acc_ty)
    out = w_self * a + w_partner * p
    tl.store(out_ptr + (r * cols)[:, None] + c[None, :], out.to(out_ptr.dtype.element_ty), mask=mask)


def tile_shape(cols: int):
    """(ROWS, COLS) of a program's tile for rows of ``cols`` elements: COLS covers a row up to
    TILE elements, and the remaining room is filled with more rows."""
    cols_pow2 = triton.next_power_of_2(max(cols, 1))
    block_cols = min(cols_pow2, TILE)
    return max(TILE // block_cols, 1), block_cols


@on_tensor_device
def mix_rows(x: torch.Tensor, index: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Launcher; x is sample-blocked (see noisefast/ops/mix_rows.py), the output takes its strides."""
    out = torch.empty_like(x)
    rows = x.shape[0]
    if x.numel() == 0:
        return out
    cols = x.numel() // rows
    block_rows, block_cols = tile_shape(cols)
    col_blocks = triton.cdiv(cols, block_cols)
    grid = (triton.cdiv(rows, block_rows) * col_blocks,)
    lam64 = lam.reshape(1).to(device=x.device, dtype=torch.float64)
    index = index.to(torch.int64).contiguous()
    # The interpreter rounds to bfloat16 wrongly (see .interpreter): write a float32 stand-in with
    # out's strides and let torch round it.
    written = (torch.empty_like(out, dtype=torch.float32) if INTERPRETING and out.dtype == torch.bfloat16
               else out)
    _mix_rows_kernel[grid](x, written, index, lam64, rows, cols, col_blocks, ROWS=block_rows, COLS=block_cols)
    return finish_output(out, written)
