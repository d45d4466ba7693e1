"""Correctly rounded float32 division and square root inside Triton kernels.

Compiled Triton lowers float32 ``/`` to ``div.full.f32`` and ``tl.sqrt`` to ``sqrt.approx.f32``
(errors up to 2 ulp), while the interpreter (TRITON_INTERPRET=1), the C++ kernels and the eager
references round correctly. These helpers give the IEEE results in both modes, so that compiled
kernels equal what the CPU tests check (and identities such as c_skip(sigma_min) = sd^2 / sd^2 = 1
hold exactly). float64 operators are correctly rounded already. tests/triton_aot.py fails on any
approximate float32 division or square root left in a compiled kernel.
"""
import triton
import triton.language as tl


@triton.jit
def sqrt_rn(x):
    """Correctly rounded square root of a float32 or float64 tensor."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def div_rn(a, b):
    """a / b correctly rounded; b a float32 or float64 tensor, a a tensor of its dtype or a number."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)
