"""Loading of the compiled kernels, the choice of backend for each call, and the compiled ops' schemas.

Every fused op of noisefast is a ``torch.library.custom_op`` in the ``noisefast`` namespace, defined
with its fake kernel and autograd in ``noisefast/ops/<op>.py``. Its implementation calls the op's
:class:`Kernels`, which picks one backend for the tensors' device:

- ``"cpu"``: the C++ kernel of ``noisefast._C`` (``torch.ops.noisefast_C.<op>``) on CPU tensors;
- ``"cuda"``: the CUDA C++ kernel of ``noisefast._C`` on CUDA tensors;
- ``"triton"``: the Triton kernel (CUDA tensors; CPU tensors too under ``TRITON_INTERPRET=1``);
- ``"reference"``: ``noisefast.reference``, the eager PyTorch specification, on any device.

Default choice: CPU tensors take "cpu"; CUDA tensors take the op's CUDA C++ kernel when it has one,
else its Triton kernel. If a kernel is missing (extension not built, Triton not installed) the op
falls back to the reference and warns once, saying what is missing and how to build it.
``use_backend`` forces a backend and raises a clear error when it cannot serve the tensors' device.

Schemas are written once, in Python: the op's signature in ``noisefast/ops/<op>.py`` (torch infers
the ``noisefast::<op>`` schema from its annotations), and :class:`Kernels` defines the compiled op
``noisefast_C::<op>`` from that same schema (see :func:`kernel_schema`). The C++ files only register
implementations (``TORCH_LIBRARY_IMPL(noisefast_C, CPU|CUDA, m)``), as torchao does; a C++ kernel
whose signature does not match fails when its op is defined, at import.
"""
from __future__ import annotations

import contextlib
import contextvars
import importlib
import importlib.util
import os
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

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


def extension():
    """The compiled extension module ``noisefast._C``, or None when it could not be loaded."""
    return _EXTENSION


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


def choose_backend(op: str, device: torch.device, gpu_preference: tuple) -> str:
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


# The namespace of the compiled kernels. Its schemas are defined here, from the ops' own; the C++
# files register implementations only.
_COMPILED_LIBRARY = torch.library.Library("noisefast_C", "DEF")


def kernel_schema(op) -> str:
    """The schema of ``noisefast_C::<op>``: the schema of the custom op ``op`` without its arguments
    that have defaults, and with ``int`` for ``SymInt``.

    An op's defaulted trailing arguments are its own policy, never a kernel's: ``checked=True``
    tells an op that its caller has validated the values it would otherwise read on the host. Every
    backend (compiled, Triton, reference) takes exactly the remaining arguments. Example:
    ``noisefast::gaussian_noise(Tensor x, Tensor seed, float std, Tensor? scale, SymInt inner,
    bool scale_checked=False) -> Tensor`` gives ``gaussian_noise(Tensor x, Tensor seed, float std,
    Tensor? scale, int inner) -> Tensor``.
    """
    head, _, returns = str(op._opoverload._schema).partition(") -> ")
    arguments = head.partition("(")[2]
    kept = [a.replace("SymInt", "int") for a in arguments.split(", ") if a and "=" not in a]
    return f"{op._name}({', '.join(kept)}) -> {returns}"


_is_compiling = torch.compiler.is_compiling
_len_dispatch_stack = torch._C._len_torch_dispatch_stack  # what _get_current_dispatch_mode() reads
_functorch_active = torch._C._are_functorch_transforms_active
_is_grad_enabled = torch.is_grad_enabled
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
# The answers of _direct_call: dispatch through the op / call directly / directly with autograd.
_VIA_OP, _DIRECT, _DIRECT_WITH_GRAD = 0, 1, 2


_CPU_OR_CUDA: Dict[torch.device, bool] = {}


def _is_cpu_or_cuda(device: torch.device) -> bool:
    """device.type in ("cpu", "cuda"), remembered per device (``device.type`` costs ~2 us)."""
    known = _CPU_OR_CUDA.get(device)
    if known is None:
        known = _CPU_OR_CUDA[device] = device.type in ("cpu", "cuda")
    return known


def tensor_positions(op) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(positions of the Tensor / Tensor? arguments, positions of the Tensor[] arguments) in the
    schema of the custom op ``op``: what :func:`_direct_call` looks at."""
    singles, lists = [], []
    for i, argument in enumerate(op._opoverload._schema.arguments):
        kind = str(argument.type)
        if kind in ("Tensor", "Optional[Tensor]"):
            singles.append(i)
        elif kind in ("List[Tensor]", "List[Optional[Tensor]]"):
            lists.append(i)
    return tuple(singles), tuple(lists)


def _direct_call(args, singles: Tuple[int, ...], lists: Tuple[int, ...]) -> int:
    """How :meth:`Kernels.call` runs ``args`` (the op's tensor arguments at positions ``singles``,
    its tensor-list arguments at ``lists``): _VIA_OP under torch.compile, a dispatch mode (fake
    tensors, export) or a functorch transform, or with a tensor subclass or a tensor on a device
    other than CPU/CUDA; else _DIRECT_WITH_GRAD when a tensor requires grad in grad mode, _DIRECT
    otherwise. (Written for speed: only the tensor positions are looked at; ``t.device.type``
    would cost ~2 us.)"""
    if _is_compiling() or _len_dispatch_stack() or _functorch_active():
        return _VIA_OP
    grad = False
    for i in singles:
        a = args[i]
        if a is None:
            continue
        if type(a) not in _PLAIN_TENSORS or not (a.is_cpu or a.is_cuda):
            return _VIA_OP  # a tensor subclass (the op's own dispatch judges it), another device, not a tensor
        if a.requires_grad:
            grad = True
    for i in lists:
        for a in args[i]:
            if a is None:
                continue
            if type(a) not in _PLAIN_TENSORS or not (a.is_cpu or a.is_cuda):
                return _VIA_OP
            if a.requires_grad:
                grad = True
    return _DIRECT_WITH_GRAD if grad and _is_grad_enabled() else _DIRECT


def runs_eagerly() -> bool:
    """Whether ops run eagerly here: not traced by torch.compile, under no dispatch mode (fake
    tensors, export), inside no functorch transform. Only then may a call take a shortcut that
    reads values on the host or picks its kernel by what the tensors hold."""
    return not _is_compiling() and not _len_dispatch_stack() and not _functorch_active()


def host_scalar(t: torch.Tensor) -> bool:
    """Whether the tensor ``t`` may be read now as a Python number in its place: a plain 0-d CPU
    tensor through which no gradient is wanted, in eager mode (:func:`runs_eagerly`). Its value is
    then the same number the kernels would read from it, for ~3 us less per call than a tensor
    operand."""
    return (runs_eagerly() and type(t) in _PLAIN_TENSORS and t.is_cpu and t.dim() == 0
            and not (t.requires_grad and _is_grad_enabled()))


def plain_tensor(t: torch.Tensor) -> bool:
    """A CPU or CUDA tensor of torch's own types (no subclass): what the eager shortcuts may run."""
    return type(t) in _PLAIN_TENSORS and (t.is_cpu or t.is_cuda)


def _autograd_function(name: str, impl: Callable, setup_context: Callable, backward: Callable):
    """An autograd.Function running ``impl`` with the custom op's setup_context and backward.

    Old style (forward takes ctx): the new style's ``setup_context`` staticmethod makes every
    ``apply`` bind the arguments with ``inspect.signature`` (~100 us)."""
    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output

    return type(f"{name}_function", (torch.autograd.Function,),
                {"forward": staticmethod(forward), "backward": staticmethod(backward)})


def increment_versions(tensors: List[torch.Tensor]) -> None:
    """Bump the autograd version counters of tensors written in place outside the dispatcher."""
    try:
        torch._C._increment_version(tensors)  # what torch.autograd.graph.increment_version calls
    except TypeError:  # torch < 2.5 takes one tensor at a time
        for t in tensors:
            torch.autograd.graph.increment_version(t)


_set_grad_enabled = torch._C._set_grad_enabled


class Kernels:
    """The backends of one custom op, and the compiled op ``noisefast_C::<op>`` they include.

    ``op`` is the custom op (``torch.library.custom_op``) whose implementation calls this object;
    every backend implements the op's kernel schema (:func:`kernel_schema`) under the op's name:

    - compiled: ``torch.ops.noisefast_C.<name>``, defined here; its C++ CPU kernel always exists,
      its CUDA kernel when ``cuda`` is True;
    - ``reference``: the module (``"noisefast.reference.<family>"``) whose function ``<name>`` is
      the kernel-level reference;
    - ``triton``: the module (``"noisefast.triton.<family>"``) whose function ``<name>`` launches the
      Triton kernel, or None.

    The Python modules are imported at first use, so that importing noisefast never imports Triton
    (``TRITON_INTERPRET`` must be set before that). ``public`` is the user-facing name that warnings
    and errors mention. On a GPU the CUDA C++ kernel is preferred to the Triton one.
    """

    def __init__(self, op, *, public: str, reference: str, triton: Optional[str] = None, cuda: bool = False):
        self.op = op
        self.name = op._name
        self.public = public
        self.modules = {"reference": reference, "triton": triton}  # Python backends: module paths
        self.gpu_preference = (("cuda",) if cuda else ()) + (("triton",) if triton else ())
        self._resolved: Dict[str, Callable] = {}
        self._impl = op._init_fn  # the op's Python implementation (what its CPU/CUDA kernels run)
        self._function = None     # see register_autograd
        self._backends: Dict[tuple, str] = {}  # see backend_for
        self._kernels: Dict[tuple, Callable] = {}  # see kernel_for
        self._in_place: Dict[torch.device, Callable] = {}  # run_in_place's kernels of CPU/CUDA devices, no forced backend
        self._singles, self._lists = tensor_positions(op)  # see call
        _COMPILED_LIBRARY.define(kernel_schema(op))

    def register_autograd(self, backward: Callable, *, setup_context: Callable) -> None:
        """``op.register_autograd(backward, setup_context=setup_context)``, and the same two functions
        as the autograd of :meth:`call`'s eager path."""
        self.op.register_autograd(backward, setup_context=setup_context)
        self._function = _autograd_function(self.name, self._impl, setup_context, backward)

    def call(self, *args):
        """The custom op on ``args`` (all of its arguments, positionally), with its dispatch skipped
        where that changes nothing.

        Traced (torch.compile), under a dispatch mode (fake tensors, export) or a functorch transform,
        with tensor subclasses or on devices other than CPU/CUDA this is ``op(*args)``. Otherwise
        it runs the op's Python implementation directly (the same checks, the same kernel), through
        an autograd.Function made of the op's own setup_context and backward when a gradient is
        needed: the custom op's layers (autograd, redispatch, backend lookup, argument binding)
        cost ~100 us per call, more than a small tensor's kernel (benchmarks/bench_overhead.py).
        """
        how = _direct_call(args, self._singles, self._lists)
        if how == _DIRECT:
            return self._impl(*args)
        if how == _DIRECT_WITH_GRAD and self._function is not None:
            return self._function.apply(*args)
        return self.op(*args)  # (an op without autograd raises there as it should)

    def implementation_function(self) -> Callable:
        """The op's Python implementation (its checks, then the backend's kernel): what the custom
        op's CPU/CUDA kernels run, and what :meth:`call` runs directly in eager mode."""
        return self._impl

    def implementation(self, backend: str) -> Callable:
        """The function that runs this op on ``backend`` (imported on first use)."""
        fn = self._resolved.get(backend)
        if fn is None:
            if backend in ("cpu", "cuda"):
                # The overload's C++ callable: no overload resolution, no Python frame of OpOverload.__call__.
                fn = getattr(torch.ops.noisefast_C, self.name).default._op
            else:
                fn = getattr(importlib.import_module(self.modules[backend]), self.name)
            self._resolved[backend] = fn
        return fn

    def backend_for(self, device: torch.device) -> str:
        """:func:`choose_backend` for this op, remembered per (forced backend, device): what it
        depends on (the extension, Triton, TRITON_INTERPRET, CUDA) is fixed once noisefast is
        imported. An unavailable forced backend raises every time."""
        key = (_FORCED.get(), device)
        backend = self._backends.get(key)
        if backend is None:
            backend = choose_backend(self.public, device, self.gpu_preference)
            self._backends[key] = backend
        return backend

    def kernel_for(self, device: torch.device) -> Callable:
        """``implementation(backend_for(device))``, remembered per (forced backend, device)."""
        key = (_FORCED.get(), device)
        fn = self._kernels.get(key)
        if fn is None:
            fn = self._kernels[key] = self.implementation(self.backend_for(device))
        return fn

    def __call__(self, device: torch.device, *args):
        return self.kernel_for(device)(*args)

    def run_in_place(self, device: torch.device, written: List[torch.Tensor], *args) -> None:
        """Run the op on ``args``, which writes the tensors ``written`` in place.

        Traced (torch.compile), under a dispatch mode (fake tensors, export) or a functorch
        transform, or on other devices, this is the custom op, under no_grad. In eager mode on CPU/CUDA tensors it calls the backend
        directly, with grad mode off, and bumps the written tensors' version counters itself: the
        custom op's Python layers
        (autograd, ADInplaceOrView, backend) convert and walk a list argument three times, ~2 us
        per tensor, which for a 300-tensor model is ~0.7 ms per call, more than the CUDA EMA
        kernel takes for 100M parameters (torch._foreach_lerp_ pays ~0.1 ms).
        """
        if _is_compiling() or _len_dispatch_stack() or _functorch_active():
            with torch.no_grad():
                self.op(*args)
            return
        forced = _FORCED.get()
        kernel = self._in_place.get(device) if forced is None else None
        if kernel is None:
            if not _is_cpu_or_cuda(device):
                with torch.no_grad():
                    self.op(*args)
                return
            kernel = self.kernel_for(device)
            if forced is None:
                self._in_place[device] = kernel
        # Grad mode off around the kernel as under no_grad, without the context manager's ~2 us.
        if _is_grad_enabled():
            _set_grad_enabled(False)
            try:
                kernel(*args)
            finally:
                _set_grad_enabled(True)
        else:
            kernel(*args)
        increment_versions(written)
