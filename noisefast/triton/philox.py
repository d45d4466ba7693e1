"""The portable noise stream inside Triton kernels: four normals per ``tl.philox`` call.

Same definition as csrc/include/noisefast/philox.h and noisefast/reference/philox.py (docs/design.md,
"The portable noise stream"). ``tl.philox`` computes exactly Random123's Philox4x32-10 with key
(seed_lo, seed_hi); we pass all four counter words ourselves, (q_lo, q_hi, stream_lo, stream_hi),
because ``tl.randint4x`` leaves the stream words at zero.

On a GPU the transcendental functions come from libdevice (correctly rounded sqrt, accurate
log/sin/cos, like the CUDA C++ kernels); the interpreter (TRITON_INTERPRET=1) has no libdevice, so
there the ``tl`` versions (numpy underneath) are used. The choice is made when this module is
imported, which is why TRITON_INTERPRET must be set before noisefast imports Triton.
"""
import os

import triton
import triton.language as tl

TWO_PI_F32: tl.constexpr = 6.28318548202514648   # float32(2 pi)
TWO_POW_MINUS_24: tl.constexpr = 5.9604644775390625e-08

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    @triton.jit
    def _log(x):
        return tl.log(x)

    @triton.jit
    def _cos(x):
        return tl.cos(x)

    @triton.jit
    def _sin(x):
        return tl.sin(x)
else:
    from triton.language.extra import libdevice

    @triton.jit
    def _log(x):
        return libdevice.log(x)

    @triton.jit
    def _cos(x):
        return libdevice.cos(x)

    @triton.jit
    def _sin(x):
        return libdevice.sin(x)


@triton.jit
def sqrt_rn(x):
    """Correctly rounded square root in float32 and float64 (tl.sqrt is approximate in float32)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def philox_block(seed, stream, q):
    """The four uint32 Philox words of blocks ``q`` (int64 tensor) of ``stream`` under ``seed``."""
    c0 = q.to(tl.uint32)
    c1 = (q >> 32).to(tl.uint32)
    zero = c0 * 0
    stream = tl.to_tensor(stream).to(tl.int64)  # a literal, a constexpr or a scalar argument
    c2 = zero + (stream & 0xFFFFFFFF).to(tl.uint32)
    c3 = zero + (stream >> 32).to(tl.uint32)
    return tl.philox(seed, c0, c1, c2, c3)


@triton.jit
def uniform_open01(w):
    """u = ((w >> 9) * 2 + 1) * 2^-24 from uint32 words: exact float32, strictly inside (0, 1)."""
    return (((w >> 9) << 1) | 1).to(tl.float32) * TWO_POW_MINUS_24


@triton.jit
def normal4(seed, stream, q):
    """Elements 4q, 4q+1, 4q+2, 4q+3 of the normal stream, as four float32 tensors shaped like q."""
    w0, w1, w2, w3 = philox_block(seed, stream, q)
    r0 = tl.sqrt_rn(-2.0 * _log(uniform_open01(w0)))
    r2 = tl.sqrt_rn(-2.0 * _log(uniform_open01(w2)))
    theta1 = uniform_open01(w1) * TWO_PI_F32
    theta3 = uniform_open01(w3) * TWO_PI_F32
    return r0 * _cos(theta1), r0 * _sin(theta1), r2 * _cos(theta3), r2 * _sin(theta3)


@triton.jit
def interleave4(a, b, c, d):
    """[a0, b0, c0, d0, a1, b1, ...]: the four lanes of each block in element order."""
    return tl.interleave(tl.interleave(a, c), tl.interleave(b, d))
