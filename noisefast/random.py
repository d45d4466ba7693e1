"""Seeds and the portable normal stream.

Every noisefast op that draws noise takes ``generator=None`` and draws a fresh 63-bit seed from it
(the default generator of the data's device when None), so ``torch.manual_seed`` reproduces a run
and each call gives new noise. On CUDA the seed is drawn as a one-element device tensor that the
kernel reads, which keeps the op free of host synchronisation and safe under CUDA-graph capture
(each replay draws a new seed). The noise itself comes from the portable stream (design.md): the
same seed gives the same numbers on the CPU, on CUDA and through Triton.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .ops.randn import randn_out

SEED_BOUND = 2 ** 63 - 1  # seeds are drawn from [0, 2^63 - 1)

# Stream numbers: independent draws inside one op call share its seed and differ by stream.
STREAM_NOISE = 0         # the main noise z (gaussian_noise, consistency pairs, diffusion eps)
STREAM_PERTURBATION = 1  # DDPM-IP input perturbation xi
STREAM_OFFSET = 2        # offset noise o, one value per (sample, channel)
STREAM_LEVELS = 3        # uniforms that pick noise levels (inverse CDF), one per sample


def draw_seed(device: Union[torch.device, str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A fresh seed for one op call: an int64 tensor of shape [1] on ``device``.

    Drawn from ``generator`` (the default generator of ``device`` when None). A generator on
    another device is used where it lives and the seed is moved to ``device``.
    """
    device = torch.device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    draw_on = device if generator is None else generator.device
    seed = torch.randint(0, SEED_BOUND, (1,), dtype=torch.int64, device=draw_on, generator=generator)
    return seed.to(device, non_blocking=True)


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
    (j // 4, stream) and key seed, turned into normals by Box-Muller in float32; see design.md,
    "The portable noise stream". The same arguments give the same numbers on every backend.
    """
    shape = _size_from(size)
    for name, value, bound in (("seed", seed, 2 ** 64), ("stream", stream, 2 ** 64), ("offset", offset, 2 ** 63)):
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < bound:
            raise ValueError(f"{name} must be an int in [0, {bound}), got {value!r}")
    if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
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
