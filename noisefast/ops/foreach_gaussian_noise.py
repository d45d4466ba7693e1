"""Gaussian noise over a list of tensors in one fused pass, torch's ``_foreach`` style:
``foreach_gaussian_noise_`` (in place) and ``foreach_gaussian_noise`` (out of place, differentiable;
what WeightNoise builds its noisy weights with).

Ops ``noisefast::foreach_gaussian_noise_(tensors, seed, stds, std_tensor)`` and
``noisefast::foreach_gaussian_noise(tensors, seed, stds, std_tensor) -> tensors``: on CUDA one launch
of a multi-tensor kernel (csrc/cuda/foreach_gaussian_noise.cu; a list longer than one launch can
describe in its 4 KiB of kernel arguments takes several), on the CPU one at::parallel_for over the tensors'
noise laid end to end (csrc/cpu/foreach_gaussian_noise_cpu.cpp). The per-element formula is
csrc/include/noisefast/gaussian_noise.h, the one gaussian_noise uses, so a one-tensor call adds
exactly the noise ``gaussian_noise`` adds under the same seed; noisefast/reference/
foreach_gaussian_noise.py is the specification.

Argument checks: the public functions check what costs O(1) per call or per std value; the
per-tensor checks (dtype, device, layout, aliasing) run in C++ before anything is written
(csrc/ops/foreach_gaussian_noise.cpp; the reference backend repeats them in Python) and raise
ValueError/TypeError naming the argument.

Autograd: the in-place op records no history (like an optimizer step). The out-of-place op's
gradient is the identity for each tensor; it saves nothing, in particular no noise.

DTensors (a list whose first tensor is a DTensor: FSDP2's parameters and gradients): each rank
works on its shards, tensor by tensor through gaussian_noise's kernel at the shards' global stream
positions (noisefast/_dtensor.py), so every element gets the noise it gets in the unsharded list
under the same seed (base_k from the global sizes). One launch per tensor, and in place one copy
back per tensor: slower than the fused pass, with no communication.
"""
from __future__ import annotations

import contextlib
import numbers
import warnings
from collections.abc import Sequence
from typing import List, Optional, Tuple, Union

import torch

from .._checks import check_float_tensor, check_nonnegative_number
from .._dtensor import PLAIN, Part, is_dtensor, part_of, wrap_like
from .._library import Kernels
from .._list_operands import check_noise_operands, check_std_operands
from ..random import draw_seed
from .gaussian_noise import KERNELS as GAUSSIAN_NOISE

Std = Union[float, torch.Tensor, Sequence[float]]


def _device(tensors: Sequence[torch.Tensor]) -> torch.device:
    return tensors[0].device if tensors else torch.device("cpu")


@torch.library.custom_op("noisefast::foreach_gaussian_noise_", mutates_args=("tensors",))
def foreach_gaussian_noise_op_(tensors: List[torch.Tensor], seed: torch.Tensor, stds: List[float],
                               std_tensor: Optional[torch.Tensor]) -> None:
    """``tensors[k] += std_k * z_k`` in place; std_k = stds[k], or the 0-d std_tensor (float32 or
    float64, on the tensors' device or the CPU) when given (stds then empty)."""
    KERNELS_(_device(tensors), tensors, seed, stds, std_tensor)


@foreach_gaussian_noise_op_.register_fake
def _(tensors, seed, stds, std_tensor):
    # Meta and fake tensors: the kernels' checks that read no data (torch's meta kernels raise too).
    check_std_operands(tensors, stds, std_tensor)
    check_noise_operands(tensors, in_place=True)


KERNELS_ = Kernels(foreach_gaussian_noise_op_, public="foreach_gaussian_noise_",
                   reference="noisefast.reference.foreach_gaussian_noise", cuda=True)


@torch.library.custom_op("noisefast::foreach_gaussian_noise", mutates_args=())
def foreach_gaussian_noise_op(tensors: List[torch.Tensor], seed: torch.Tensor, stds: List[float],
                              std_tensor: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """New contiguous tensors ``tensors[k] + std_k * z_k`` (the noise foreach_gaussian_noise_ adds
    with the same arguments). Gradient: the identity for each tensor."""
    return KERNELS(_device(tensors), tensors, seed, stds, std_tensor)


@foreach_gaussian_noise_op.register_fake
def _(tensors, seed, stds, std_tensor):
    check_std_operands(tensors, stds, std_tensor)
    check_noise_operands(tensors, in_place=False)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in tensors]


KERNELS = Kernels(foreach_gaussian_noise_op, public="foreach_gaussian_noise",
                  reference="noisefast.reference.foreach_gaussian_noise", cuda=True)


def _copies_setup_context(ctx, inputs, output):
    ctx.num_stds = len(inputs[2])  # the gradient is the identity: nothing is saved, in particular no noise
    # A copy that received no gradient passes None on (not zeros): optimizers and DDP's
    # find_unused_parameters must still see an unused parameter as unused.
    ctx.set_materialize_grads(False)


def _copies_backward(ctx, grads):
    # No gradient for stds: None, or [] for an empty list (autograd compares the pytree structure
    # of this return with the inputs', in which an empty list is a node, not a leaf).
    return list(grads), None, None if ctx.num_stds else [], None


foreach_gaussian_noise_op.register_autograd(_copies_backward, setup_context=_copies_setup_context)


def _tensor_list(value, name: str) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a tensor or a list or tuple of tensors, got {type(value).__name__}")
    for i, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
        if t.layout != torch.strided:  # checked here: the dispatcher would route a sparse list elsewhere
            raise TypeError(f"{name}[{i}] must be a dense (strided) tensor, got {t.layout}")
    return list(value)


def std_arguments(std: Std, count: int, device: torch.device) -> Tuple[List[float], Optional[torch.Tensor]]:
    """(stds, std_tensor) for the ops from the public ``std`` argument of a call on ``count`` tensors.

    Raises TypeError/ValueError naming ``std``: a negative or non-finite number, a tensor that is
    not a 0-d float tensor on ``device`` or the CPU, a sequence whose length is not ``count``.
    """
    if isinstance(std, torch.Tensor):
        if not std.is_floating_point():
            raise TypeError(f"std must be a float tensor, got {std.dtype}")
        if std.dim() != 0:
            raise ValueError(f"std must be a 0-d tensor (or a number, or one number per tensor), "
                             f"got shape {tuple(std.shape)}")
        if std.device != device and std.device.type != "cpu":
            raise ValueError(f"std is on {std.device} but the tensors are on {device}")
        std = std.detach()
        return [], std if std.dtype in (torch.float32, torch.float64) else std.float()
    if isinstance(std, numbers.Real) and not isinstance(std, bool):
        return [check_nonnegative_number(std, "std")] * count, None
    if isinstance(std, Sequence) and not isinstance(std, (str, bytes)):
        if len(std) != count:
            raise ValueError(f"std has {len(std)} values for {count} tensors")
        return [check_nonnegative_number(s, f"std[{k}]") for k, s in enumerate(std)], None
    raise TypeError(f"std must be a number, a 0-d float tensor or a sequence of numbers, got {type(std).__name__}")


def foreach_gaussian_noise_(tensors: Union[torch.Tensor, Sequence[torch.Tensor]], std: Std, *,
                            generator: Optional[torch.Generator] = None):
    """In place, for every tensor k of the list: ``tensors[k] += std_k * z_k``, z ~ N(0, 1), one fused pass.

    The multi-tensor form of :func:`noisefast.gaussian_noise` (Gaussian noise injection; Bishop
    1995), named in torch's ``_foreach`` style, for noise added to many tensors at once: gradients
    (:class:`GradientNoise`, Neelakantan et al. 2015), weights, replicas. Replaces
    ``for t in tensors: t.add_(torch.randn_like(t), alpha=std)``.

    Args:
        tensors: a list or tuple of float32, float16, bfloat16 or float64 tensors of any shapes
            and dtypes (mixed), all on one device; or one tensor. Non-contiguous tensors (views)
            are updated in place, elements outside the view untouched. Empty tensors are skipped.
        std: the standard deviation: a number >= 0; a 0-d float tensor on the tensors' device or
            the CPU (a CUDA tensor is read by the kernel, not by the host: no synchronisation,
            safe under CUDA-graph capture, and its value is not checked); or a sequence of numbers,
            one per tensor.
        generator: where the call's seed is drawn (default: the default generator of the
            tensors' device).

    Returns:
        ``tensors`` itself (the list, or the one tensor).

    Maths: ``t <- round(t + std_k * z)`` computed in float32 (float64 for float64 tensors) and
    rounded once to t's dtype, the arithmetic of gaussian_noise (csrc/include/noisefast/
    gaussian_noise.h). A tensor whose std is 0 is left bit for bit as it was. No autograd history
    is recorded (like an optimizer step).

    Noise stream: ONE seed per call (noisefast.random.draw_seed). Element j (row-major logical
    order) of tensor k is element ``base_k + j`` of stream STREAM_NOISE of the portable stream,
    ``base_k = sum_{i<k} round_up(numel_i, 4)``: every Philox call serves one tensor, and a
    one-tensor list gets exactly the noise ``gaussian_noise`` adds with the same seed.

    Cost: one launch on CUDA for as many tensors as one launch's 4 KiB of kernel arguments can
    describe (mta_max_tensors in csrc/cuda/multi_tensor_apply.cuh; longer lists take several), one
    parallel loop on the CPU; each tensor read and written once (non-contiguous ones through a contiguous copy).

    Raises (before anything is written): TypeError/ValueError naming ``tensors`` (not tensors,
    unsupported dtype or layout, several devices, an expanded tensor, the same memory listed
    twice: it would get noise twice) or ``std`` (negative or non-finite, wrong length or shape).
    An empty list is a no-op.

    DTensors (when tensors[0] is one, e.g. FSDP2's gradients): each rank adds noise to its own
    shards, each element getting the noise it gets in the unsharded list under the same seed (seed
    all ranks alike); one gaussian_noise launch and one copy per tensor instead of the fused pass.
    A Partial placement raises ValueError naming the tensor (docs/design.md, "DTensors and the
    global index").
    """
    single = isinstance(tensors, torch.Tensor)
    ts = _tensor_list(tensors, "tensors")
    stds, std_tensor = std_arguments(std, len(ts), _device(ts))
    if not ts:
        return tensors
    if type(ts[0]) is not torch.Tensor and is_dtensor(ts[0]):
        _foreach_dtensor(ts, stds, std_tensor, generator, in_place=True)
        return ts[0] if single else tensors
    seed = draw_seed(ts[0].device, generator)
    KERNELS_.run_in_place(ts[0].device, ts, ts, seed, stds, std_tensor)
    return ts[0] if single else tensors


def foreach_gaussian_noise(tensors: Union[torch.Tensor, Sequence[torch.Tensor]], std: Std, *,
                           generator: Optional[torch.Generator] = None) -> List[torch.Tensor]:
    """New contiguous tensors ``tensors[k] + std_k * z_k``: the noise :func:`foreach_gaussian_noise_`
    would add with the same seed (same stream layout, same arithmetic), out of place in one pass
    (each input read once, each output written once).

    Same arguments and errors as :func:`foreach_gaussian_noise_`, except that tensors may overlap
    (nothing is written to them). Returns a list of new tensors, one per input (a one-element
    list for one tensor). Differentiable: the gradient with respect to each input is the
    identity, and nothing is saved for backward; a copy that receives no gradient passes None on.
    """
    ts = _tensor_list(tensors, "tensors")
    stds, std_tensor = std_arguments(std, len(ts), _device(ts))
    if not ts:
        return []
    if type(ts[0]) is not torch.Tensor and is_dtensor(ts[0]):
        return _foreach_dtensor(ts, stds, std_tensor, generator, in_place=False)
    return KERNELS.call(ts, draw_seed(ts[0].device, generator), stds, std_tensor)


def _foreach_dtensor(ts: List[torch.Tensor], stds: List[float], std_tensor: Optional[torch.Tensor],
                     generator: Optional[torch.Generator], *, in_place: bool) -> Optional[List[torch.Tensor]]:
    """The foreach ops on a list holding DTensors (plain tensors in it are whole tensors): tensor k's
    shard gets stream elements base_k + its global indices, base_k from the global sizes as in
    the fused kernels. Everything is checked before the first write."""
    parts: List[Part] = []
    device = ts[0].device
    for k, t in enumerate(ts):
        check_float_tensor(t, f"tensors[{k}]")
        if t.device != device:
            raise ValueError(f"tensors[{k}] is on {t.device} but tensors[0] is on {device}")
        parts.append(part_of(t, f"tensors[{k}]") if is_dtensor(t) else Part(t, (), (), PLAIN))
    scale = None if std_tensor is None else std_tensor.to(device).reshape(1)
    seed = draw_seed(device, generator)
    outputs = []
    base = 0
    with torch.no_grad() if in_place else contextlib.nullcontext():
        for k, (t, part) in enumerate(zip(ts, parts)):
            offset, segment, stride = part.map.shifted(base)
            base += (t.numel() + 3) // 4 * 4  # the fused kernels' layout: each tensor starts a Philox block
            std_k = 1.0 if scale is not None else stds[k]
            local = part.local
            if in_place:
                if local.numel() and not (scale is None and std_k == 0.0):
                    local.copy_(GAUSSIAN_NOISE.call(local, seed, std_k, scale, 1, offset, segment, stride, True))
                continue
            out = GAUSSIAN_NOISE.call(local, seed, std_k, scale, 1, offset, segment, stride, True)
            outputs.append(wrap_like(out, t) if is_dtensor(t) else out)
    return None if in_place else outputs


# ---- deprecated name ------------------------------------------------------------------------------

def add_noise_(tensors: Union[torch.Tensor, Sequence[torch.Tensor]], std: Std, *,
               generator: Optional[torch.Generator] = None):
    """Deprecated name of :func:`foreach_gaussian_noise_` (same arguments, same noise); it will be
    removed in the next release. It was renamed because torch's convention reads ``f_`` as the
    in-place form of ``f``, and :func:`noisefast.add_noise` is the unrelated diffusion op."""
    warnings.warn("noisefast.add_noise_ is deprecated and will be removed in the next release; "
                  "use noisefast.foreach_gaussian_noise_ (same arguments, same noise)",
                  DeprecationWarning, stacklevel=2)
    return foreach_gaussian_noise_(tensors, std, generator=generator)
