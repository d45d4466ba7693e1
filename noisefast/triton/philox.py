"""The portable noise stream inside Triton kernels: four normals per ``tl.philox`` call.

Same definition as csrc/include/noisefast/philox.h and noisefast/reference/philox.py (docs/design.md,
"The portable noise stream"). ``tl.philox`` computes exactly Random123's Philox4x32-10 with key
(seed_lo, seed_hi); we pass all four counter words ourselves, (q_lo, q_hi, stream_lo, stream_hi),
because ``tl.randint4x`` leaves the stream words at zero.

On a GPU the logarithm comes from libdevice (accurate, like the CUDA C++ kernels' logf); the
interpreter (TRITON_INTERPRET=1) has no libdevice, so there ``tl.log`` (numpy underneath) is used.
The choice is made when this module is imported, which is why TRITON_INTERPRET must be set before
noisefast imports Triton. Sine and cosine are computed here (:func:`sincos_2pi`), in both modes:
a general sin/cos carries a slow path for huge arguments whose local array costs every noise
kernel a stack frame, and Box-Muller angles are below 2 pi.
"""
import os

import triton
import triton.language as tl

# Module globals reach a compiled kernel only as tl.constexpr objects (an annotation
# `NAME: tl.constexpr = value` is invisible to the compiler; the interpreter reads either).
TWO_PI_F32 = tl.constexpr(6.28318548202514648)   # float32(2 pi)
TWO_POW_MINUS_24 = tl.constexpr(5.9604644775390625e-08)

# sincos_2pi: a Cody-Waite reduction by pi/2 in three parts (Cephes' sinf constants, doubled: the
# first two have few enough bits that j * part is exact for the quadrants j <= 4 that angles below
# 2 pi need) and Cephes' minimax polynomials for sin and cos on [-pi/4, pi/4]: the C++ kernels'
# box_muller_sincos (csrc/include/noisefast/philox.h), operation for operation.
TWO_OVER_PI = tl.constexpr(0.636619772367581343)
PIO2_1 = tl.constexpr(1.5703125)
PIO2_2 = tl.constexpr(4.837512969970703125e-4)
PIO2_3 = tl.constexpr(7.54978995489188216e-8)
SIN_1 = tl.constexpr(-1.6666654611e-1)
SIN_2 = tl.constexpr(8.3321608736e-3)
SIN_3 = tl.constexpr(-1.9515295891e-4)
COS_1 = tl.constexpr(4.166664568298827e-2)
COS_2 = tl.constexpr(-1.388731625493765e-3)
COS_3 = tl.constexpr(2.443315711809948e-5)

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    @triton.jit
    def _log(x):
        return tl.log(x)
else:
    from triton.language.extra import libdevice

    @triton.jit
    def _log(x):
        return libdevice.log(x)


@triton.jit
def philox_block(seed, stream, q):
    """The four uint32 Philox words of blocks ``q`` (int64 tensor) of ``stream`` under ``seed``.

    ``stream``: a literal, a constexpr, a scalar argument (32- or 64-bit) or an int64 tensor like q."""
    c0 = q.to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    s = q * 0 + stream  # int64, shaped like q, whatever form stream comes in
    c2 = (s & 0xFFFFFFFF).to(tl.uint32)
    c3 = (s >> 32).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def uniform_open01(w):
    """u = ((w >> 9) * 2 + 1) * 2^-24 from uint32 words: exact float32, strictly inside (0, 1)."""
    return (((w >> 9) << 1) | 1).to(tl.float32) * TWO_POW_MINUS_24


@triton.jit
def sincos_2pi(u):
    """(cos theta, sin theta) of theta = u * float32(2 pi), for float32 u in (0, 1).

    At most 1.6 ulp from the exact cosine and sine of theta (every possible u is checked in
    tests/test_triton_numerics.py; CUDA's sincosf: 2 ulp), with no slow path: theta < 2 pi."""
    theta = u * TWO_PI_F32
    j = tl.floor(theta * TWO_OVER_PI + 0.5)  # the quadrant, 0 .. 4
    r = theta - j * PIO2_1  # exact
    r = r - j * PIO2_2
    r = r - j * PIO2_3      # r = theta - j pi / 2, in [-pi/4, pi/4] (a hair beyond at the edges)
    z = r * r
    s = r + r * z * ((SIN_3 * z + SIN_2) * z + SIN_1)
    c = 1.0 - 0.5 * z + z * z * ((COS_3 * z + COS_2) * z + COS_1)
    quadrant = j.to(tl.int32) & 3
    sin = tl.where(quadrant == 0, s, tl.where(quadrant == 1, c, tl.where(quadrant == 2, -s, -c)))
    cos = tl.where(quadrant == 0, c, tl.where(quadrant == 1, -s, tl.where(quadrant == 2, -c, s)))
    return cos, sin


@triton.jit
def normal4(seed, stream, q):
    """Elements 4q, 4q+1, 4q+2, 4q+3 of the normal stream, as four float32 tensors shaped like q."""
    w0, w1, w2, w3 = philox_block(seed, stream, q)
    r0 = tl.sqrt_rn(-2.0 * _log(uniform_open01(w0)))
    r2 = tl.sqrt_rn(-2.0 * _log(uniform_open01(w2)))
    c1, s1 = sincos_2pi(uniform_open01(w1))
    c3, s3 = sincos_2pi(uniform_open01(w3))
    return r0 * c1, r0 * s1, r2 * c3, r2 * s3


@triton.jit
def normal_at(seed, stream, j):
    """Elements ``j`` (int64 tensor) of the normal stream, each computed alone: the Philox block
    j // 4, then only the Box-Muller half that lane j % 4 needs (the same operations on the same
    inputs as normal4, so the same bits; half the logarithms)."""
    w0, w1, w2, w3 = philox_block(seed, stream, j >> 2)
    lane = j & 3
    first_pair = lane < 2
    r = tl.sqrt_rn(-2.0 * _log(uniform_open01(tl.where(first_pair, w0, w2))))
    c, s = sincos_2pi(uniform_open01(tl.where(first_pair, w1, w3)))
    return r * tl.where((lane & 1) == 0, c, s)


@triton.jit
def interleave4(a, b, c, d):
    """[a0, b0, c0, d0, a1, b1, ...]: the four lanes of each block in element order."""
    return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
