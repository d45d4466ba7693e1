"""Loading of the compiled kernels and the choice of backend for each call.

Every fused op of noisefast is a ``torch.library.custom_op`` in the ``noisefast`` namespace (schema,
fake kernel and autograd live in ``noisefast/ops/<op>.py``). Its implementation calls
:func:`dispatch`, which picks one backend for the tensor's device:

- ``"cpu"``: the C++ kernel of ``noisefast._C`` (``torch.ops.noisefast_C.<op>``) on CPU tensors;
- ``"cuda"``: the CUDA C++ kernel of ``noisefast._C`` on CUDA tensors;
- ``"triton"``: the Triton kernel (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``);
- ``"reference"``: ``noisefast.reference``, the eager PyTorch specification, on any device.

Default choice: CPU tensors take "cpu"; CUDA tensors take the op's preferred GPU kernel. If a
kernel is missing (extension not built, Triton not installed) the op falls back to the reference
and warns once, saying what is missing and how to build it. ``use_backend`` forces a backend and
raises a clear error when it cannot serve the tensor's device.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import warnings
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")

_BUILD_HINT = (
    "build it with `pip install --no-build-isolation -e .` in a Python environment with torch "
    "(CUDA kernels need a CUDA build of torch and nvcc; see the README, 'Building')"
)


def _load_extension():
    try:
        from noisefast import _C  # noqa: F401  (loading registers torch.ops.noisefast_C.*)
    except Exception as exc:  # ImportError, or an OSError from a library built for another torch
        return None, f"{type(exc).__name__}: {exc}"
    return _C, None


_EXTENSION, _EXTENSION_ERROR = _load_extension()


def extension_error() -> Optional[str]:
    """Why ``noisefast._C`` could not be loaded, or None when it is loaded."""
    return _EXTENSION_ERROR


def has_cpu_kernels() -> bool:
    return _EXTENSION is not None


def has_cuda_kernels() -> bool:
    return _EXTENSION is not None and bool(getattr(_EXTENSION, "WITH_CUDA", 0))


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def backends() -> Dict[str, bool]:
    """Which backends can run here: ``{"reference", "cpu", "cuda", "triton"} -> bool``.

    "cuda" and "triton" need a visible CUDA device ("triton" also runs CPU tensors when
    ``TRITON_INTERPRET=1`` is set before noisefast imports Triton).
    """
    cuda_device = torch.cuda.is_available()
    return {
        "reference": True,
        "cpu": has_cpu_kernels(),
        "cuda": has_cuda_kernels() and cuda_device,
        "triton": has_triton() and (cuda_device or triton_interpreting()),
    }


_FORCED: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("noisefast_backend", default=None)


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every noisefast op inside the block on one backend.

    ``name`` is one of "reference", "cpu", "cuda", "triton". An op whose tensors that backend
    cannot serve (e.g. "cuda" with CPU tensors) raises ``RuntimeError`` naming both.
    """
    if name not in BACKENDS:
        raise ValueError(f"use_backend: name must be one of {BACKENDS}, got {name!r}")
    token = _FORCED.set(name)
    try:
        yield
    finally:
        _FORCED.reset(token)


def forced_backend() -> Optional[str]:
    return _FORCED.get()


_WARNED: set = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def _unavailable_reason(backend: str, device: torch.device) -> Optional[str]:
    """None when ``backend`` can run tensors on ``device``, else why it cannot."""
    if backend == "reference":
        return None
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend runs CPU tensors, and the tensors are on {device}"
        if not has_cpu_kernels():
            return f"the compiled extension noisefast._C is not loaded ({_EXTENSION_ERROR}); {_BUILD_HINT}"
        return None
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend runs CUDA tensors, and the tensors are on {device}"
        if not has_cuda_kernels():
            why = _EXTENSION_ERROR or "noisefast._C was built without CUDA kernels"
            return f"the CUDA kernels of noisefast._C are not available ({why}); {_BUILD_HINT}"
        return None
    if backend == "triton":
        if not has_triton():
            return "Triton is not installed (`pip install triton`, or a CUDA build of torch)"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return None
        return (f"the 'triton' backend runs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1), "
                f"and the tensors are on {device}")
    raise ValueError(f"unknown backend {backend!r}")


def choose_backend(op: str, device: torch.device, gpu_preference: Sequence[str]) -> str:
    """The backend that runs ``op`` on ``device``: the forced one, else the best available."""
    forced = forced_backend()
    if forced is not None:
        if forced in ("cuda", "triton") and forced not in gpu_preference:
            raise RuntimeError(f"noisefast.{op} has no {forced!r} kernel (it has {tuple(gpu_preference)})")
        why = _unavailable_reason(forced, device)
        if why is not None:
            raise RuntimeError(f"noisefast.{op}: use_backend({forced!r}) cannot run here: {why}")
        return forced
    candidates = ("cpu",) if device.type == "cpu" else tuple(gpu_preference)
    reasons = []
    for backend in candidates:
        why = _unavailable_reason(backend, device)
        if why is None:
            return backend
        reasons.append(why)
    _warn_once(f"{op}:{device.type}",
               f"noisefast.{op} on {device.type} is running the slow reference implementation: "
               + "; ".join(reasons))
    return "reference"


class Kernels:
    """The implementations of one op, by backend, looked up lazily.

    ``cpu`` and ``cuda`` name an op of ``torch.ops.noisefast_C`` (the same C++ op serves both
    devices); ``triton`` and ``reference`` are "module:function" strings imported at first use, so
    that importing noisefast never imports Triton (``TRITON_INTERPRET`` must be set before that).
    """

    def __init__(self, op: str, *, reference: str, compiled: Optional[str] = None,
                 triton: Optional[str] = None, gpu_preference: Sequence[str] = ("cuda", "triton")):
        self.op = op
        self._paths = {"reference": reference, "triton": triton}
        self._compiled = compiled
        self.gpu_preference = tuple(b for b in gpu_preference
                                    if (b == "triton" and triton) or (b == "cuda" and compiled))
        self._resolved: Dict[str, Callable] = {}

    def _resolve(self, backend: str) -> Callable:
        fn = self._resolved.get(backend)
        if fn is None:
            if backend in ("cpu", "cuda"):
                fn = getattr(torch.ops.noisefast_C, self._compiled)
            else:
                module, _, name = self._paths[backend].partition(":")
                fn = getattr(importlib.import_module(module), name)
            self._resolved[backend] = fn
        return fn

    def backend_for(self, device: torch.device) -> str:
        return choose_backend(self.op, device, self.gpu_preference)

    def __call__(self, device: torch.device, *args, **kwargs):
        return self._resolve(self.backend_for(device))(*args, **kwargs)
