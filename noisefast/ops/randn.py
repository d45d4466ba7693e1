"""The portable normal stream as an op: ``noisefast.randn`` and ``noisefast::randn_out``.

``noisefast::randn_out(out, seed, stream, offset)`` fills a contiguous tensor with elements
offset .. offset + numel - 1 of one stream of the portable noise stream (docs/design.md, "The
portable noise stream"); ``noisefast::philox_words_out`` writes the raw Philox words, for tests that
compare backends below the float transform. The public :func:`randn` checks its arguments and calls
``randn_out``. The ops that draw noise inside their own kernels (gaussian_noise, the perturbation
ops) call ``randn_out`` only in backward, to regenerate their noise from the saved seed.

Every op of noisefast follows this file's pattern: a ``torch.library.custom_op`` (its schema
inferred from the annotations), a fake kernel for tracing, autograd where there is a gradient, an
implementation that hands the call to the backend its :class:`~noisefast._library.Kernels` chooses,
and the public function with its argument checks.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._dtypes import FLOAT_DTYPES
from .._library import Kernels


@torch.library.custom_op("noisefast::randn_out", mutates_args=("out",))
def randn_out(out: torch.Tensor, seed: torch.Tensor, stream: int, offset: int) -> None:
    """Fill contiguous ``out`` with elements offset .. offset+numel-1 of stream ``stream`` under
    the seed in ``seed`` (int64, one element, on out's device)."""
    if not out.is_contiguous():
        raise ValueError("randn_out: out must be contiguous")
    KERNELS(out.device, out, seed, stream, offset)


@randn_out.register_fake
def _(out, seed, stream, offset):
    return None


KERNELS = Kernels(randn_out, public="randn", reference="noisefast.reference.randn",
                  triton="noisefast.triton.randn", cuda=True)


@torch.library.custom_op("noisefast::philox_words_out", mutates_args=("out",))
def philox_words_out(out: torch.Tensor, seed: torch.Tensor, stream: int, first_block: int) -> None:
    """Fill int64 ``out`` [rows, 4] with the Philox words of blocks first_block.. (for tests)."""
    if out.dtype != torch.int64 or out.dim() != 2 or out.shape[1] != 4 or not out.is_contiguous():
        raise ValueError("philox_words_out: out must be a contiguous int64 tensor of shape [rows, 4]")
    WORD_KERNELS(out.device, out, seed, stream, first_block)


@philox_words_out.register_fake
def _(out, seed, stream, first_block):
    return None


WORD_KERNELS = Kernels(philox_words_out, public="philox_words", reference="noisefast.reference.randn",
                       triton="noisefast.triton.randn")


def _size_from(size: Sequence) -> tuple:
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = tuple(size[0])
    for s in size:
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            raise ValueError(f"size must be non-negative ints, got {tuple(size)}")
    return tuple(size)


def randn(*size, seed: int, stream: int = 0, offset: int = 0, device=None,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normals from the portable stream: elements ``offset .. offset + numel - 1``.

    Args:
        *size: the shape (ints, or one tuple/list/torch.Size).
        seed: a 64-bit seed, an int in [0, 2^64) (values >= 2^63 are used modulo 2^64 as int64).
        stream: which independent stream of the seed, an int in [0, 2^64).
        offset: index of the first element, >= 0 (any value, not only multiples of 4).
        device: where to generate (default: the current default device).
        dtype: float32 (default), float16, bfloat16 or float64; the numbers are computed in
            float32 and rounded to ``dtype``.

    Returns:
        A contiguous tensor of shape ``size``, row-major element k being stream element offset + k.

    Element j is lane j % 4 of Philox4x32-10 (Salmon et al. 2011) with counter
    (j // 4, stream) and key seed, turned into normals by Box-Muller in float32; see
    docs/design.md, "The portable noise stream". The same arguments give the same numbers on every backend.
    """
    shape = _size_from(size)
    for name, value, bound in (("seed", seed, 2 ** 64), ("stream", stream, 2 ** 64), ("offset", offset, 2 ** 63)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
            raise ValueError(f"{name} must be an int in [0, {bound}), got {value!r}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
    numel = 1
    for s in shape:
        numel *= s
    if offset + numel > 2 ** 63 - 1:
        raise ValueError(f"offset + numel must stay below 2^63, got offset={offset}, numel={numel}")
    if stream >= 2 ** 63:
        stream -= 2 ** 64  # the same 64 bits, as the int64 the op schema carries
    out = torch.empty(shape, dtype=dtype, device=device)
    # A fill, not torch.tensor(..., device=...): no host-to-device copy (capturable in a CUDA graph).
    seed_tensor = torch.full((1,), seed if seed < 2 ** 63 else seed - 2 ** 64, dtype=torch.int64, device=out.device)
    randn_out(out, seed_tensor, stream, offset)
    return out
