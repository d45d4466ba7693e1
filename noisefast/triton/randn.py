"""Triton kernel of noisefast_C::randn_out: the portable normal stream written to memory."""
import torch
import triton
import triton.language as tl

from .device import on_tensor_device
from .interpreter import finish_output, kernel_output
from .philox import interleave4, normal4, philox_block

BLOCKS_PER_PROGRAM = 256  # Philox blocks per program: 1024 elements


@triton.jit
def _randn_kernel(out_ptr, seed_ptr, n, stream, offset, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    first_block = offset // 4
    q = first_block + tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    z0, z1, z2, z3 = normal4(seed, stream, q)
    # Element j of the stream goes to out[j - offset]; the first block may start before offset.
    j = first_block * 4 + tl.program_id(0).to(tl.int64) * (4 * BLOCKS) + tl.arange(0, 4 * BLOCKS)
    i = j - offset
    z = interleave4(z0, z1, z2, z3)
    tl.store(out_ptr + i, z.to(out_ptr.dtype.element_ty), mask=(i >= 0) & (i < n))


@on_tensor_device
def randn_out(out: torch.Tensor, seed: torch.Tensor, stream: int, offset: int) -> None:
    n = out.numel()
    if n == 0:
        return
    num_blocks = (offset + n - 1) // 4 + 1 - offset // 4
    grid = (triton.cdiv(num_blocks, BLOCKS_PER_PROGRAM),)
    written = kernel_output(out)
    _randn_kernel[grid](written, seed, n, stream, offset, BLOCKS=BLOCKS_PER_PROGRAM)
    finish_output(out, written)


@triton.jit
def _philox_words_kernel(out_ptr, seed_ptr, rows, stream, first_block, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    r = tl.program_id(0).to(tl.int64) * BLOCKS + tl.arange(0, BLOCKS)
    w0, w1, w2, w3 = philox_block(seed, stream, first_block + r)
    words = interleave4(w0.to(tl.int64), w1.to(tl.int64), w2.to(tl.int64), w3.to(tl.int64))
    i = tl.program_id(0).to(tl.int64) * (4 * BLOCKS) + tl.arange(0, 4 * BLOCKS)
    tl.store(out_ptr + i, words, mask=i // 4 < rows)  # int64 compare: 4 * rows would overflow int32


@on_tensor_device
def philox_words_out(out: torch.Tensor, seed: torch.Tensor, stream: int, first_block: int) -> None:
    rows = out.shape[0]
    if rows == 0:
        return
    grid = (triton.cdiv(rows, BLOCKS_PER_PROGRAM),)
    _philox_words_kernel[grid](out, seed, rows, stream, first_block, BLOCKS=BLOCKS_PER_PROGRAM)
