"""Discrete noise levels by inverse CDF inside Triton kernels.

The same rule as csrc/include/noisefast/levels.h and noisefast/reference/perturbation.py:
u_b = element b of a uniform stream (Philox word b % 4 of block b // 4), index_b = the smallest i in
[0, m) with u_b < cdf[i] (float64 comparison), clamped to m - 1.
"""
import triton
import triton.language as tl

from .philox import philox_block, uniform_open01


@triton.jit
def stream_uniform(seed, stream, b):
    """Elements ``b`` (int64 tensor) of the uniform stream ``stream``, float32 in (0, 1)."""
    w0, w1, w2, w3 = philox_block(seed, stream, b >> 2)
    lane = b & 3
    w = tl.where(lane == 0, w0, tl.where(lane == 1, w1, tl.where(lane == 2, w2, w3)))
    return uniform_open01(w)


@triton.jit
def inverse_cdf_index(cdf_ptr, m, u, STEPS: tl.constexpr):
    """The smallest i in [0, m) with u < cdf[i] (cdf: m float64 values), clamped to m - 1.

    ``u``: a float64 tensor; ``STEPS`` >= bit_length(m) halvings (a branch-free binary search:
    every lane runs all steps, finished lanes stay put).
    """
    lo = (u * 0).to(tl.int64)
    hi = lo + m  # the answer lies in [lo, hi]
    for _ in tl.static_range(STEPS):
        active = lo < hi
        mid = (lo + hi) // 2
        c = tl.load(cdf_ptr + tl.minimum(mid, m - 1))
        go_right = c <= u  # as levels.h: anything else (also NaN) moves hi
        lo = tl.where(active & go_right, mid + 1, lo)
        hi = tl.where(active, tl.where(go_right, hi, mid), hi)
    return tl.minimum(lo, m - 1)


@triton.jit
def level_index(seed, stream, b, cdf_ptr, m, STEPS: tl.constexpr):
    """The sampled interval of samples ``b`` (int64 tensor): inverse CDF of their uniforms."""
    return inverse_cdf_index(cdf_ptr, m, stream_uniform(seed, stream, b).to(tl.float64), STEPS)


def search_steps(m: int) -> int:
    """Halvings the search needs for m cdf values (a constexpr: one compilation per bit length)."""
    return max(int(m).bit_length(), 1)
