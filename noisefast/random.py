"""Seeds and stream numbers of the portable noise stream (docs/design.md, "The portable noise stream").

Every noisefast op that draws noise takes ``generator=None`` and draws a fresh 63-bit seed from it
(the default generator of the data's device when None), so ``torch.manual_seed`` reproduces a run
and each call gives new noise. On CUDA the seed is drawn as a one-element device tensor that the
kernel reads, which keeps the op free of host synchronisation and safe under CUDA-graph capture
(each replay draws a new seed). The noise itself comes from the portable stream: the same seed
gives the same numbers on the CPU, on CUDA and through Triton.

This module imports only the extension loader from noisefast (for the C++ seed draw): the
references (noisefast/reference/), the Triton kernels (noisefast/triton/) and the ops
(noisefast/ops/) all take their stream numbers from here.
The public ``noisefast.randn`` is in noisefast/ops/randn.py, with its op.
"""
from __future__ import annotations

from typing import Optional, Union

import torch

from ._library import extension

SEED_BOUND = 2 ** 63 - 1  # seeds are drawn from [0, 2^63 - 1)

# Stream numbers: independent draws inside one op call share its seed and differ by stream. The same
# numbers are csrc/include/noisefast/streams.h's (the exact tests against the reference catch a drift).
STREAM_NOISE = 0         # the main noise z (gaussian_noise, consistency pairs, diffusion eps)
STREAM_PERTURBATION = 1  # DDPM-IP input perturbation xi
STREAM_OFFSET = 2        # offset noise o, one value per (sample, channel)
STREAM_LEVELS = 3        # uniforms that pick noise levels (inverse CDF), one per sample


# The C++ draw (csrc/cpu_seed.cpp): the same numbers as the Python draw below, ~1.3 us less per call.
_draw_cpu_seed = getattr(extension(), "draw_cpu_seed", None)
_is_compiling = torch.compiler.is_compiling
_len_dispatch_stack = torch._C._len_torch_dispatch_stack
_functorch_active = torch._C._are_functorch_transforms_active
_PLAIN = (torch.Tensor, torch.nn.Parameter)


def draw_seed(device: Union[torch.device, str], generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A fresh seed for one op call: an int64 tensor of shape [1] on ``device``.

    Drawn from ``generator`` (the default generator of ``device`` when None). A generator on
    another device is used where it lives and the seed is moved to ``device``. The draw is
    ``torch.empty(1, dtype=torch.int64).random_(0, SEED_BOUND, generator=generator)`` on the
    generator's device; for CPU data in eager mode it is made in C++ (the same numbers).
    """
    if not _is_compiling() and generator is None and type(device) is torch.device and device.type == "cpu" \
            and _draw_cpu_seed is not None and not _len_dispatch_stack() and not _functorch_active():
        # The common call first, with the fewest checks: eager (is_compiling first: Dynamo folds it
        # and cannot trace the others), outside fake-tensor/dispatch modes and functorch transforms
        # (whose own random_ handling the Python draw goes through).
        return _draw_cpu_seed(None)
    if type(device) is not torch.device:
        device = torch.device(device)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if (_draw_cpu_seed is not None and device.type == "cpu" and (generator is None or generator.device.type == "cpu")
            and not _is_compiling() and not _len_dispatch_stack() and not _functorch_active()):
        return _draw_cpu_seed(generator)
    draw_on = device if generator is None else generator.device
    if torch.compiler.is_compiling():  # (dynamo traces randint, not random_)
        seed = torch.randint(0, SEED_BOUND, (1,), dtype=torch.int64, device=draw_on, generator=generator)
    else:
        # empty + random_ is what torch.randint does (the same draw, the same generator state),
        # without its argument parsing: ~5 us less per call, which small tensors notice.
        seed = torch.empty(1, dtype=torch.int64, device=draw_on).random_(0, SEED_BOUND, generator=generator)
    return seed if generator is None else seed.to(device, non_blocking=True)


def draw_seed_for(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``draw_seed(x.device, generator)``: the seed of one op call on the data x, with the common
    case (a CPU tensor, the default generator, eager mode) first and without building x.device."""
    if not _is_compiling() and generator is None and type(x) in _PLAIN and x.is_cpu and _draw_cpu_seed is not None \
            and not _len_dispatch_stack() and not _functorch_active():
        return _draw_cpu_seed(None)
    return draw_seed(x.device, generator)


def check_generator_state(state, generator: torch.Generator, name: str) -> torch.Tensor:
    """``state`` if ``generator.set_state(state)`` would succeed, else a TypeError/ValueError naming
    ``name``; checked on a scratch generator of the same device, so ``generator`` is not changed."""
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8 or state.device.type != "cpu" \
            or state.dim() != 1 or state.layout != torch.strided:
        raise TypeError(f"{name} must be a 1-d uint8 CPU tensor (torch.Generator.get_state()), got "
                        f"{state.dtype if isinstance(state, torch.Tensor) else type(state).__name__}")
    if state.numel() != generator.get_state().numel():
        raise ValueError(f"{name} holds {state.numel()} bytes, a {generator.device} generator's state "
                         f"holds {generator.get_state().numel()}")
    try:
        torch.Generator(device=generator.device).set_state(state)
    except RuntimeError as exc:
        raise ValueError(f"{name} is not a valid {generator.device} generator state: {exc}") from None
    return state
