"""Reference of the portable noise stream, in exact integer arithmetic.

This is the specification the C++ (csrc/include/noisefast/philox.h) and Triton
(noisefast/triton/philox.py) kernels are tested against, and the source of every other reference's
noise. The definition is in docs/design.md, "The portable noise stream"; in short, element j of stream ``s`` under seed ``k`` is lane j % 4 of
Philox4x32-10 with counter (q_lo, q_hi, s_lo, s_hi), q = j // 4, key (k_lo, k_hi), turned into
normals by Box-Muller in float32.

32-bit words are held in int64 tensors. Products of two 32-bit words are formed from 16-bit
halves, so no intermediate exceeds 2^34 and every step is exact on any device.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch

MASK32 = 0xFFFFFFFF
PHILOX_ROUND_A = 0xD2511F53
PHILOX_ROUND_B = 0xCD9E8D57
PHILOX_KEY_A = 0x9E3779B9
PHILOX_KEY_B = 0xBB67AE85
PHILOX_ROUNDS = 10
NORMALS_PER_BLOCK = 4
TWO_PI_F32 = 6.28318548202514648  # float32(2 pi), the constant the kernels multiply by

Words = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _mul_hi_lo(a: int, b: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(high 32 bits, low 32 bits) of the 64-bit product of the constant ``a`` and words ``b``."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    b_hi, b_lo = b >> 16, b & 0xFFFF
    low = a_lo * b_lo
    middle = a_hi * b_lo + a_lo * b_hi                 # < 2^33
    low_sum = low + ((middle & 0xFFFF) << 16)          # < 2^33
    hi = (a_hi * b_hi + (middle >> 16) + (low_sum >> 32)) & MASK32
    return hi, low_sum & MASK32


def philox4x32_10(c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor,
                  k0: int, k1: int) -> Words:
    """Philox4x32 with ten rounds (Salmon et al., SC'11; Random123's philox4x32_R(10, ...)).

    Counters are int64 tensors holding 32-bit words; the key is two 32-bit Python ints.
    """
    for _ in range(PHILOX_ROUNDS):
        hi_a, lo_a = _mul_hi_lo(PHILOX_ROUND_A, c0)
        hi_b, lo_b = _mul_hi_lo(PHILOX_ROUND_B, c2)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0 = (k0 + PHILOX_KEY_A) & MASK32
        k1 = (k1 + PHILOX_KEY_B) & MASK32
    return c0, c1, c2, c3


def _check_u64(value: int, name: str) -> int:
    """``value`` as the unsigned 64-bit number the kernels use: an int in [0, 2^64), or a negative
    int64 (how an int64 tensor or an op argument carries values >= 2^63), taken modulo 2^64."""
    value = int(value)
    if not -2 ** 63 <= value < 2 ** 64:
        raise ValueError(f"{name} must be in [0, 2^64) (or its int64 bits), got {value}")
    return value % 2 ** 64


def philox_words(seed: int, stream: int, blocks: torch.Tensor) -> Words:
    """The four Philox words of each block index in ``blocks`` (int64, >= 0) of ``stream``."""
    seed = _check_u64(seed, "seed")
    stream = _check_u64(stream, "stream")
    blocks = blocks.to(torch.int64)
    zeros = torch.zeros_like(blocks)
    return philox4x32_10(blocks & MASK32, blocks >> 32, zeros + (stream & MASK32), zeros + (stream >> 32),
                         seed & MASK32, seed >> 32)


def uniform_open01(words: torch.Tensor) -> torch.Tensor:
    """u = ((w >> 9) * 2 + 1) * 2^-24 as float32: exact, strictly inside (0, 1)."""
    return (((words >> 9) << 1) | 1).to(torch.float32) * (2.0 ** -24)


def box_muller4(words: Words) -> torch.Tensor:
    """Four float32 normals per Philox block, shape [..., 4] (lanes in order)."""
    w0, w1, w2, w3 = words
    r0 = torch.sqrt(-2.0 * torch.log(uniform_open01(w0)))
    r2 = torch.sqrt(-2.0 * torch.log(uniform_open01(w2)))
    theta1 = uniform_open01(w1) * TWO_PI_F32
    theta3 = uniform_open01(w3) * TWO_PI_F32
    return torch.stack([r0 * torch.cos(theta1), r0 * torch.sin(theta1),
                        r2 * torch.cos(theta3), r2 * torch.sin(theta3)], dim=-1)


def normal_stream(numel: int, seed: int, stream: int = 0, offset: int = 0,
                  device=None) -> torch.Tensor:
    """Elements ``offset .. offset + numel - 1`` of the normal stream, float32, shape [numel]."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first = offset // NORMALS_PER_BLOCK
    last = (offset + numel - 1) // NORMALS_PER_BLOCK
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    normals = box_muller4(philox_words(seed, stream, blocks)).reshape(-1)
    start = offset - first * NORMALS_PER_BLOCK
    return normals[start:start + numel]


def stream_positions(numel: int, offset: int, segment: int, stride: int, device=None) -> torch.Tensor:
    """The stream positions of ``numel`` elements, int64 [numel]: element i draws position
    ``offset + (i // segment) * stride + i % segment`` (csrc/include/noisefast/stream_map.h; a DTensor
    shard's global indices, docs/design.md "DTensors and the global index"; offset + i when
    segment == stride)."""
    i = torch.arange(numel, dtype=torch.int64, device=device)
    return offset + (i // segment) * stride + i % segment


def normal_at(positions: torch.Tensor, seed: int, stream: int = 0) -> torch.Tensor:
    """Elements ``positions`` (int64, >= 0, any order) of the normal stream, float32, shaped like
    positions: lane j % 4 of Philox block j // 4."""
    normals = box_muller4(philox_words(seed, stream, positions // NORMALS_PER_BLOCK))
    return normals.gather(-1, (positions % NORMALS_PER_BLOCK).unsqueeze(-1)).squeeze(-1)


def uniform_stream(numel: int, seed: int, stream: int = 0, offset: int = 0, device=None) -> torch.Tensor:
    """Elements ``offset .. offset + numel - 1`` of the uniform stream: u_j = uniform_open01 of
    Philox word j % 4 of block j // 4 (the words the normal stream turns into normals), float32."""
    if numel == 0:
        return torch.empty(0, dtype=torch.float32, device=device)
    first = offset // NORMALS_PER_BLOCK
    last = (offset + numel - 1) // NORMALS_PER_BLOCK
    blocks = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    words = torch.stack(philox_words(seed, stream, blocks), dim=-1).reshape(-1)
    start = offset - first * NORMALS_PER_BLOCK
    return uniform_open01(words[start:start + numel])
