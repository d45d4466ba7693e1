"""Reference of the randn ops (``randn_out``, ``philox_words_out``): the portable
stream of noisefast/reference/philox.py written to memory."""
from __future__ import annotations

import torch

from .philox import normal_stream, philox_words


def philox_words_out(out: torch.Tensor, seed: torch.Tensor, stream: int, first_block: int) -> None:
    """Kernel-level reference of ``noisefast_C::philox_words_out``: int64 [rows, 4] words."""
    blocks = torch.arange(first_block, first_block + out.shape[0], dtype=torch.int64, device=out.device)
    out.copy_(torch.stack(philox_words(int(seed.reshape(()).item()), stream, blocks), dim=-1))


def randn_out(out: torch.Tensor, seed: torch.Tensor, stream: int, offset: int) -> None:
    """Kernel-level reference of ``noisefast_C::randn_out``: fills ``out`` in place."""
    z = normal_stream(out.numel(), int(seed.reshape(()).item()), stream, offset, device=out.device)
    out.copy_(z.view(out.shape))
