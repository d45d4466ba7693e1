"""Arithmetic helpers of the Triton kernels and launcher fixes that the op-level tests cannot reach,
run through the interpreter (which executes the same code the GPU compiles; tests/triton_aot.py
checks the compiled side: no approximate division, no spills)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from noisefast.reference import philox as ref
from noisefast.reference.randn import philox_words_out as reference_philox_words_out

pytestmark = pytest.mark.triton

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from noisefast.triton.philox import interleave4, normal4, normal_at, sincos_2pi  # noqa: E402
from noisefast.triton.randn import _philox_words_kernel  # noqa: E402
from noisefast.triton.rounding import div_rn, sqrt_rn  # noqa: E402


@triton.jit
def _sincos_kernel(u_ptr, cos_ptr, sin_ptr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    c, s = sincos_2pi(tl.load(u_ptr + i))
    tl.store(cos_ptr + i, c)
    tl.store(sin_ptr + i, s)


@triton.jit
def _normal_lanes_kernel(seed_ptr, lanes_ptr, alone_ptr, FIRST: tl.constexpr, BLOCKS: tl.constexpr):
    seed = tl.load(seed_ptr)
    z0, z1, z2, z3 = normal4(seed, 7, tl.arange(0, BLOCKS).to(tl.int64) + FIRST)
    tl.store(lanes_ptr + tl.arange(0, 4 * BLOCKS), interleave4(z0, z1, z2, z3))
    j = tl.arange(0, 4 * BLOCKS).to(tl.int64) + 4 * FIRST
    tl.store(alone_ptr + tl.arange(0, 4 * BLOCKS), normal_at(seed, 7, j))


@triton.jit
def _rounding_kernel(a_ptr, b_ptr, q_ptr, r_ptr, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    a = tl.load(a_ptr + i)
    b = tl.load(b_ptr + i)
    tl.store(q_ptr + i, div_rn(a, b))
    tl.store(r_ptr + i, sqrt_rn(b))


def _ulps(actual: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|actual - exact| in units of the last place of float32(exact)."""
    spacing = np.spacing(np.abs(exact.astype(np.float32))).astype(np.float64)
    return np.abs(actual.astype(np.float64) - exact) / spacing


def test_sincos_2pi_within_two_ulp_for_every_uniform():
    """Every float32 u the stream can produce: (2k + 1) 2^-24 for k < 2^23; cos and sin of
    theta = u * float32(2 pi) against float64, at most 1.6 ulp (CUDA's sincosf: 2 ulp)."""
    n, block = 2 ** 23, 2 ** 18
    u = (torch.arange(n, dtype=torch.int64) * 2 + 1).to(torch.float32) * 2.0 ** -24
    cos, sin = torch.empty_like(u), torch.empty_like(u)
    _sincos_kernel[(n // block,)](u, cos, sin, BLOCK=block)
    theta = (u * np.float32(6.28318548202514648)).double().numpy()
    assert _ulps(cos.numpy(), np.cos(theta)).max() <= 1.6
    assert _ulps(sin.numpy(), np.sin(theta)).max() <= 1.6


def test_normal_at_equals_the_lanes_of_normal4():
    seed = torch.tensor([2 ** 62 + 99])
    lanes, alone = torch.empty(1024), torch.empty(1024)
    _normal_lanes_kernel[(1,)](seed, lanes, alone, FIRST=12345, BLOCKS=256)
    assert torch.equal(lanes, alone)
    torch.testing.assert_close(alone, ref.normal_stream(1024, 2 ** 62 + 99, 7, 4 * 12345), rtol=1e-6, atol=1e-6)


def test_div_rn_and_sqrt_rn_round_correctly():
    gen = torch.Generator().manual_seed(3)
    for dtype in (torch.float32, torch.float64):
        a = torch.randn(4096, generator=gen, dtype=dtype) * 10
        b = torch.rand(4096, generator=gen, dtype=dtype) + 1e-3
        q, r = torch.empty_like(a), torch.empty_like(a)
        _rounding_kernel[(1,)](a, b, q, r, BLOCK=4096)
        # numpy's sqrt is the IEEE one (torch's vectorised CPU sqrt is not correctly rounded)
        assert torch.equal(q, a / b) and torch.equal(r, torch.from_numpy(np.sqrt(b.numpy())))


def test_philox_words_rows_past_two_to_the_29():
    """The words kernel masked with ``i < 4 * rows`` in int32: for rows >= 2^29 that wrapped and the
    kernel wrote nothing. One program of a launch over 2^29 + 1 rows must write its 1024 words."""

    rows = 2 ** 29 + 1
    out = torch.full((256, 4), -1, dtype=torch.int64)
    _philox_words_kernel[(1,)](out, torch.tensor([5]), rows, 3, 0, BLOCKS=256)
    expected = torch.empty_like(out)
    reference_philox_words_out(expected, torch.tensor([5]), 3, 0)
    assert torch.equal(out, expected)
