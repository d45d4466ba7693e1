"""How the per-sample Triton kernels (pseudo_huber, consistency_output) tile a [B, D] problem.

A program owns a tile of ROWS samples x (COLS * ITERS) elements. Wide samples (D >= BLOCK) use
ROWS = 1 and are cut into P chunks so that about TARGET_PROGRAMS programs run; narrow samples are
packed ROWS to a program (B = 1e6 samples of D = 4 is 4e3 programs, not 1e6).
"""
import triton

BLOCK = 1024           # elements per program per iteration (ROWS * COLS)
TARGET_PROGRAMS = 1024  # enough to fill an H100 (132 SMs) several times over
MAX_ITERS = 64         # at most 64K elements per program


def sample_tiling(samples: int, elements: int, max_iters: int = MAX_ITERS):
    """(ROWS, COLS, ITERS, P): the tile of one program and the number of chunks per sample
    (ITERS <= max_iters)."""
    cols = min(BLOCK, triton.next_power_of_2(max(elements, 1)))
    rows = BLOCK // cols
    if cols < BLOCK:
        return rows, cols, 1, 1
    chunks_wanted = max(1, triton.cdiv(TARGET_PROGRAMS, samples))
    iters = min(max_iters, triton.next_power_of_2(max(1, triton.cdiv(elements, BLOCK * chunks_wanted))))
    return rows, cols, iters, triton.cdiv(elements, BLOCK * iters)
