"""Fused EMA update over lists of tensors: ``ema = decay * ema + (1 - decay) * tensor``, in place.

Ops ``noisefast::ema_update_(ema_tensors, tensors, decay, decay_tensor)`` and
``noisefast::ema_update_multi_(ema_lists, tensors, decays, decay_tensor)`` (ema_lists flattened
profile-major). One pass over all tensors: on CUDA one launch of a multi-tensor kernel
(csrc/cuda/ema_update.cu; a few more when a list holds more tensors than one launch's 4 KiB of
arguments can describe), on the CPU one at::parallel_for over the tensors' elements laid end to
end (csrc/cpu/ema_update_cpu.cpp). The per-element formula, shared by both, is
csrc/include/noisefast/ema_update.h; noisefast/reference/ema_update.py is the specification.

Argument checks: the public functions check what costs O(1) (list types and lengths, a float
decay); the per-tensor checks (shape, device, dtype pairing, layout) run in C++ before anything is
written (csrc/ops/ema_update.cpp), about 50 ns per tensor instead of a Python loop's ~1 us, and
raise the same ValueError / TypeError naming the user's argument.

Autograd: none. The shadows are updated with grad mode off, like an optimizer step; eager calls
bump their version counters (see Kernels.run_in_place).

DTensors (lists whose first weight is a DTensor: FSDP2's sharded parameters): each shadow must be
a DTensor laid out like its weight (one mesh, global shape and placements), and each rank updates
its local shards in the same one fused call, with no communication (noisefast/_dtensor.py).
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import List, Optional, Union

import torch

from .._dtensor import is_dtensor, locals_alike
from .._library import Kernels
from .._list_operands import check_decays, check_ema_operands

Decay = Union[float, torch.Tensor]


def _device(tensors: Sequence[torch.Tensor], emas: Sequence[torch.Tensor]) -> torch.device:
    """The device whose backend runs the update (the kernels check that the others match)."""
    if tensors:
        return tensors[0].device
    return emas[0].device if emas else torch.device("cpu")


@torch.library.custom_op("noisefast::ema_update_", mutates_args=("ema_tensors",))
def ema_update_op_(ema_tensors: List[torch.Tensor], tensors: List[torch.Tensor], decay: float,
                   decay_tensor: Optional[torch.Tensor]) -> None:
    """``ema_tensors[i] <- lerp(ema_tensors[i], tensors[i], 1 - d)``, d = decay_tensor (0-d, float32
    or float64, on the tensors' device or the CPU) when given, else decay."""
    KERNELS(_device(tensors, ema_tensors), ema_tensors, tensors, decay, decay_tensor)


@ema_update_op_.register_fake
def _(ema_tensors, tensors, decay, decay_tensor):
    # Meta and fake tensors: the kernels' checks that read no data (torch's meta kernels raise too).
    profiles = check_decays([] if decay_tensor is not None else [decay], decay_tensor, multi=False)
    check_ema_operands(ema_tensors, tensors, profiles, multi=False)


KERNELS = Kernels(ema_update_op_, public="ema_update_", reference="noisefast.reference.ema_update", cuda=True)


@torch.library.custom_op("noisefast::ema_update_multi_", mutates_args=("ema_lists",))
def ema_update_multi_op_(ema_lists: List[torch.Tensor], tensors: List[torch.Tensor], decays: List[float],
                         decay_tensor: Optional[torch.Tensor]) -> None:
    """P profiles at once: shadow p of tensor i is ema_lists[p * len(tensors) + i]; its decay is
    decays[p], or decay_tensor[p] (1-d, float32 or float64) when decay_tensor is given (decays
    then empty). Each tensor is read once."""
    KERNELS_MULTI(_device(tensors, ema_lists), ema_lists, tensors, decays, decay_tensor)


@ema_update_multi_op_.register_fake
def _(ema_lists, tensors, decays, decay_tensor):
    check_ema_operands(ema_lists, tensors, check_decays(decays, decay_tensor, multi=True), multi=True)


KERNELS_MULTI = Kernels(ema_update_multi_op_, public="ema_update_multi_",
                        reference="noisefast.reference.ema_update", cuda=True)


def run_ema_update(emas: List[torch.Tensor], tensors: List[torch.Tensor], decays: List[float],
                   decay_tensor: Optional[torch.Tensor]) -> None:
    """``noisefast::ema_update_multi_`` on lists the caller has checked (the EMA class's update).
    DTensors (when tensors[0] is one): shadows laid out like their weights, updated shard by shard."""
    if tensors and type(tensors[0]) is not torch.Tensor and is_dtensor(tensors[0]):
        emas, tensors = local_operands(emas, tensors, "ema_lists")
    KERNELS_MULTI.run_in_place(_device(tensors, emas), emas, emas, tensors, decays, decay_tensor)


def local_operands(emas: List[torch.Tensor], tensors: List[torch.Tensor],
                   emas_name: str) -> "tuple[List[torch.Tensor], List[torch.Tensor]]":
    """The local shards of DTensor shadows and weights (shadow k pairs with weight k modulo N),
    each shadow checked to be laid out like its weight (errors name ``emas_name`` and ``tensors``)."""
    local_tensors = locals_alike(tensors, tensors, "tensors", "tensors")
    return locals_alike(emas, tensors, emas_name, "tensors"), local_tensors


def _tensor_list(value, name: str) -> List[torch.Tensor]:
    if type(value) is list:  # the common case, without enumerate and a copy
        for t in value:
            if not isinstance(t, torch.Tensor):
                break
        else:
            return value
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a list or tuple of tensors, got {type(value).__name__}")
    for i, t in enumerate(value):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(t).__name__}")
    return list(value)


def check_decay_number(value, name: str) -> float:
    """A Python real number in [0, 1], returned as float (ValueError/TypeError naming ``name``)."""
    if type(value) is float and 0.0 <= value <= 1.0:  # the common case, without the ABC check
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number or a float tensor, got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1], got {value}")
    return value


def _decay_tensor(value: torch.Tensor, name: str, shape: tuple) -> torch.Tensor:
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a float tensor, got {value.dtype}")
    if value.numel() != math.prod(shape):
        raise ValueError(f"{name} must hold {math.prod(shape)} value(s), got shape {tuple(value.shape)}")
    value = value.detach().reshape(shape)
    return value if value.dtype in (torch.float32, torch.float64) else value.float()


def ema_update_(ema_tensors: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor], decay: Decay) -> None:
    """In place, for every i: ``ema_tensors[i] = decay * ema_tensors[i] + (1 - decay) * tensors[i]``.

    Computed as ``ema_tensors[i].lerp_(tensors[i], 1 - decay)`` (bit for bit in float32; see
    noisefast/reference/ema_update.py for the rounding of the weight), in one fused pass over all tensors:
    one CUDA launch per dtype pairing for as many tensors as one launch's 4 KiB of kernel arguments
    can describe (a few launches for longer or mixed lists; the capacity is derived in
    csrc/cuda/multi_tensor_apply.cuh, mta_max_tensors), one parallel loop on the CPU. Exponential moving averages of weights: Polyak & Juditsky 1992; the usual form in
    diffusion training (diffusers' EMAModel, EDM2) is exactly this lerp.

    Args:
        ema_tensors: list of N shadow tensors, updated in place. Each has its weight's shape and
            device, and its weight's dtype or float32 for a float16/bfloat16 weight (recommended:
            a bfloat16 shadow stalls once (1 - decay) * |x - ema| falls under half a bfloat16 ulp,
            i.e. for decay > ~0.996). Any layout; shadows that are not dense with their weight's
            strides are updated in a dense copy and written back.
        tensors: list of N weights (float32, float16, bfloat16 or float64), any shapes; read only.
        decay: a number in [0, 1], or a 0-d float tensor on the tensors' device or the CPU. A CUDA
            tensor is read by the kernel, never by the host: no synchronisation, so the call is
            safe under CUDA-graph capture (and its value is not checked; keep it in [0, 1]).

    Raises (before anything is written): TypeError/ValueError naming ``ema_tensors``, ``tensors``
    or ``decay`` for non-lists, different lengths, shapes, devices or unsupported dtypes, internally
    overlapping shadows, shadows that share memory (a tensor listed twice), a decay outside [0, 1]
    (checked for numbers and CPU tensors). Empty lists and empty tensors are no-ops.

    DTensors: when ``tensors[0]`` is a DTensor (FSDP2), every weight and shadow must be a DTensor,
    each shadow on its weight's mesh with its global shape and Shard/Replicate placements; each rank
    updates its own shards in one fused pass, with no communication, and the shadows keep their
    placements. A Partial placement raises ValueError naming the tensor; a shadow laid out unlike
    its weight raises ValueError naming it.
    """
    ema_tensors = _tensor_list(ema_tensors, "ema_tensors")
    tensors = _tensor_list(tensors, "tensors")
    if len(ema_tensors) != len(tensors):
        raise ValueError(f"ema_tensors has {len(ema_tensors)} tensors but tensors has {len(tensors)}")
    if type(decay) is not float and isinstance(decay, torch.Tensor):
        decay_value, decay_tensor = 0.0, _decay_tensor(decay, "decay", ())
    else:
        decay_value, decay_tensor = check_decay_number(decay, "decay"), None
    if not tensors:
        return
    if type(tensors[0]) is not torch.Tensor and is_dtensor(tensors[0]):
        ema_tensors, tensors = local_operands(ema_tensors, tensors, "ema_tensors")
    KERNELS.run_in_place(tensors[0].device, ema_tensors, ema_tensors, tensors, decay_value, decay_tensor)


def ema_update_multi_(ema_lists: Sequence[Sequence[torch.Tensor]], tensors: Sequence[torch.Tensor],
                      decays: Union[Sequence[float], torch.Tensor]) -> None:
    """Several EMA profiles of the same weights in one pass that reads each weight once:
    ``ema_lists[p][i] = decays[p] * ema_lists[p][i] + (1 - decays[p]) * tensors[i]`` for every p, i.

    For instance EDM2's two power-function profiles (sigma_rel 0.05 and 0.10, Karras et al. 2024),
    or a fast and a slow EMA. Same formula, dtypes, layouts and errors as :func:`ema_update_`.

    Args:
        ema_lists: P >= 1 lists of N shadows each.
        tensors: the N weights.
        decays: P numbers in [0, 1], or a 1-d float tensor of P decays on the tensors' device (read
            by the kernel: no synchronisation) or the CPU.

    Memory traffic per element: the weight is read once and each profile's shadow read and
    written once, against P reads of the weight for P separate updates. On CUDA up to four
    profiles share a pass (more profiles take further passes); each profile adds a pointer per
    tensor to a launch's arguments, so a launch describes fewer tensors the more profiles it
    updates (mta_max_tensors in csrc/cuda/multi_tensor_apply.cuh).
    """
    if isinstance(ema_lists, torch.Tensor) or not isinstance(ema_lists, (list, tuple)):
        raise TypeError(f"ema_lists must be a list of lists of tensors, got {type(ema_lists).__name__}")
    if not ema_lists:
        raise ValueError("ema_lists must hold at least one list of shadows")
    tensors = _tensor_list(tensors, "tensors")
    flat: List[torch.Tensor] = []
    for p, shadows in enumerate(ema_lists):
        shadows = _tensor_list(shadows, f"ema_lists[{p}]")
        if len(shadows) != len(tensors):
            raise ValueError(f"ema_lists[{p}] has {len(shadows)} tensors but tensors has {len(tensors)}")
        flat.extend(shadows)
    profiles = len(ema_lists)
    if isinstance(decays, torch.Tensor):
        decay_values, decay_tensor = [], _decay_tensor(decays, "decays", (profiles,))
    else:
        if isinstance(decays, (str, bytes)) or not isinstance(decays, Sequence):
            raise TypeError(f"decays must be a sequence of numbers or a 1-d tensor, got {type(decays).__name__}")
        if len(decays) != profiles:
            raise ValueError(f"decays has {len(decays)} values but ema_lists has {profiles} lists")
        decay_values = [check_decay_number(d, f"decays[{p}]") for p, d in enumerate(decays)]
        decay_tensor = None
    if not tensors:
        return
    run_ema_update(flat, tensors, decay_values, decay_tensor)
