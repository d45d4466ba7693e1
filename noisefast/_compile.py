"""Interplay with torch.compile that the package needs in more than one place."""
from __future__ import annotations

import functools
from typing import Optional, Union

import torch


def eager_under_compile(fn):
    """``torch.compiler.disable(fn)``, resolved at the first call.

    For the stateful helpers (EMA.update, GradientNoise.step, noise-schedule steps) whose counters
    change every call: traced, they would recompile a compiled training step each step; run
    eagerly (a graph break) they never do. Decorating with torch.compiler.disable directly would
    import torch._dynamo when noisefast is imported (~1.5 s); here that happens on first use.
    """
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        if disabled is None:
            disabled = torch.compiler.disable(fn)
        return disabled(*args, **kwargs)

    return wrapper


def mark_static(t: torch.Tensor) -> torch.Tensor:
    """``torch._dynamo.mark_static_address(t)`` (unguarded), without importing torch._dynamo.

    A tensor that a compiled step updates in place (a counter, an EMA shadow) must be a static input
    for CUDA graphs (``mode="reduce-overhead"``) to record the update rather than skip the graph.
    mark_static_address only sets the attribute written here; when torch._dynamo is already imported
    the function itself is called (tests/test_compiled_training_step.py checks the two agree).
    """
    import sys

    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.mark_static_address(t)
    else:
        t._dynamo_static_input_type = "unguarded"
    return t


class StepCounter:
    """A count of steps (EMA updates, gradient-noise steps, a noise schedule's step) kept in a 0-d
    int64 tensor on the device that uses it, with a copy on the host.

    Eager: the host copy is the truth and every change also fills the tensor (one tiny kernel, no
    synchronisation, no host-to-device copy), so eager code keeps its host arithmetic. Traced by
    torch.compile or captured in a CUDA graph (:meth:`on_device`): only the tensor changes,
    in place (nothing for a graph to guard, replayed by CUDA graphs), and the host copy is marked
    stale; :attr:`value` reads the tensor again (one synchronisation) the next time it is asked for.
    """

    def __init__(self, value: int = 0, device=None):
        self.tensor = mark_static(torch.full((), value, dtype=torch.int64, device=device))
        self._on_cuda = self.tensor.is_cuda
        self._host: Optional[int] = value

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    def on_device(self) -> bool:
        """Whether a change now must stay on the device: the code is traced by torch.compile, or
        captured in a CUDA graph on the tensor's device (no host arithmetic may be baked into the
        graph). The device type is kept as a flag: this runs at every eager call."""
        return torch.compiler.is_compiling() or (self._on_cuda and torch.cuda.is_current_stream_capturing())

    @property
    def value(self) -> int:
        """The count as a Python int (reads the tensor once after traced or captured changes)."""
        if self._host is None:
            self._host = int(self.tensor)
        return self._host

    def set(self, value: Union[int, torch.Tensor]) -> None:
        """Set the count: a Python int (checked by the caller), or a 0-d integer tensor (kept on
        the device: the host copy becomes stale)."""
        if isinstance(value, torch.Tensor):
            self.tensor.copy_(value)
            self._host = None
        elif self.on_device():
            self.tensor.fill_(value)
            self._host = None
        else:
            self._host = value
            self.tensor.fill_(value)

    def advance(self, by: int = 1) -> None:
        """Add ``by`` to the count."""
        if self.on_device():
            self.tensor.add_(by)
            self._host = None
        else:
            self._host = self.value + by
            self.tensor.fill_(self._host)

    def to(self, device) -> None:
        """Move the tensor to ``device`` (the host copy is kept)."""
        host = self._host
        if self.tensor.is_meta:  # built under torch.device("meta"), then to_empty: nothing to copy out
            moved = torch.full((), host or 0, dtype=self.tensor.dtype, device=device)
        else:
            moved = self.tensor.to(device)
        self.tensor = mark_static(moved)
        self._on_cuda = self.tensor.is_cuda
        self._host = host
