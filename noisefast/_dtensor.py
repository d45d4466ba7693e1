"""DTensor operands (``torch.distributed.tensor``): each rank's shard, and where its elements are in
the global tensor (docs/design.md, "DTensors and the global index").

noisefast's ops are elementwise (or per sample), so on a DTensor they run on each rank's local
shard with no communication, and their outputs keep the input's placements. Noise must not depend
on the sharding: element i of a DTensor's local shard draws the stream element its GLOBAL row-major
index names, the one the same element of the unsharded tensor draws under the same seed. A shard
is a box of the global tensor (``compute_local_shape_and_global_offset``, torch's own
computation); when the box's elements are runs of ``segment`` consecutive global elements every
``stride`` elements, local element l is global element

    offset + (l // segment) * stride + l % segment

(:class:`StreamMap`; the kernels' ``offset, segment, stride`` arguments, csrc/include/noisefast/
stream_map.h). Replicate and Shard(0) of a row-major tensor are one run (segment == stride: offset
+ l, the kernels' contiguous path); Shard(d) with d > 0 is one run per index of the dimensions
before d. A mesh that shards two tensor dimensions gives one run per row when only the first of
them has more than one index before it ([B, C, ...] with Shard(0) and Shard(1)); other boxes raise
NotImplementedError naming the placements. Partial placements (values that are pending sums) and
torch's private strided shards raise before anything is written.

Seeds: a DTensor op draws its seed on each rank from that rank's generator, so every rank must
seed alike (``torch.manual_seed(s)`` on all ranks, or the same ``generator`` state); then a
Replicate tensor gets the same noise on every rank and a sharded one the unsharded tensor's noise.

This module never imports ``torch.distributed.tensor`` itself (0.3 s): a DTensor can only exist
once its module is loaded, so :func:`is_dtensor` looks the class up in ``sys.modules``.
"""
from __future__ import annotations

import math
import sys
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch

_DTENSOR_MODULE = "torch.distributed.tensor"


def is_dtensor(value) -> bool:
    """Whether ``value`` is a ``torch.distributed.tensor.DTensor`` (without importing that module)."""
    module = sys.modules.get(_DTENSOR_MODULE)
    return module is not None and isinstance(value, module.DTensor)


def _distributed():
    return sys.modules[_DTENSOR_MODULE]


class StreamMap(NamedTuple):
    """Stream positions of a shard's elements: local element l draws
    ``offset + (l // segment) * stride + l % segment`` (offset + l when segment == stride)."""
    offset: int
    segment: int
    stride: int

    @property
    def contiguous(self) -> bool:
        return self.segment == self.stride

    def shifted(self, base: int) -> "StreamMap":
        """The same positions ``base`` elements further on (a tensor laid after others in a stream)."""
        return StreamMap(self.offset + base, self.segment, self.stride)


PLAIN = StreamMap(0, 1, 1)  # a plain tensor: element l draws l


class Part(NamedTuple):
    """A DTensor's shard on this rank: the local tensor, the box of the global tensor it holds
    (``box_offset``, ``box_shape``, per dimension) and the stream positions of its elements."""
    local: torch.Tensor
    box_offset: Tuple[int, ...]
    box_shape: Tuple[int, ...]
    map: StreamMap


def _placements_text(t) -> str:
    return "(" + ", ".join(repr(p) for p in t.placements) + ")"


def check_placements(t, name: str) -> None:
    """ValueError for a Partial placement, NotImplementedError for any placement other than
    Shard(d) and Replicate(), naming ``name`` and the placements; nothing is written before."""
    dist = _distributed()
    for p in t.placements:
        if isinstance(p, dist.Partial):
            raise ValueError(
                f"{name} is a DTensor with a Partial placement {_placements_text(t)}: its local values are "
                f"pending sums, not its elements, so noisefast cannot work on them shard by shard; "
                f"redistribute it to Shard or Replicate placements first")
        if type(p) is not dist.Shard and type(p) is not dist.Replicate:
            raise NotImplementedError(
                f"{name} is a DTensor with placements {_placements_text(t)}: noisefast serves Shard(d) and "
                f"Replicate() placements only (got {type(p).__name__})")


def _inner_sizes(shape: Sequence[int]) -> List[int]:
    inner, acc = [0] * len(shape), 1
    for d in range(len(shape) - 1, -1, -1):
        inner[d] = acc
        acc *= shape[d]
    return inner


def stream_map_of_box(shape: Sequence[int], box_offset: Sequence[int], box_shape: Sequence[int],
                      placements_text: str = "") -> StreamMap:
    """The :class:`StreamMap` of the box [box_offset, box_offset + box_shape) of a row-major tensor
    of ``shape``: NotImplementedError when its elements are not evenly spaced runs."""
    if len(shape) == 0 or math.prod(box_shape) == 0:
        return PLAIN
    inner = _inner_sizes(shape)
    offset = sum(o * s for o, s in zip(box_offset, inner))
    cut = [d for d in range(len(shape)) if box_shape[d] != shape[d]]
    if not cut:
        return StreamMap(offset, 1, 1)
    last = cut[-1]
    if math.prod(box_shape[:last]) == 1:  # one run
        return StreamMap(offset, 1, 1)
    # Runs are the box's rows over the dimensions before `last`: evenly spaced when they are
    # consecutive global rows, i.e. the dimensions before the last cut one among them have one index.
    before = [d for d in cut if d < last]
    if before and math.prod(box_shape[:before[-1]]) != 1:
        raise NotImplementedError(
            f"noisefast cannot map a DTensor shard of shape {tuple(box_shape)} at offset {tuple(box_offset)} "
            f"of a tensor of shape {tuple(shape)}{' (placements ' + placements_text + ')' if placements_text else ''}"
            f" to the global noise stream: its elements are not evenly spaced runs of the global tensor "
            f"(shard one tensor dimension, or dimension 0 and one other)")
    return StreamMap(offset, box_shape[last] * inner[last], shape[last] * inner[last])


def part_of(t, name: str) -> Part:
    """This rank's :class:`Part` of the DTensor ``t`` (placements checked, errors naming ``name``)."""
    check_placements(t, name)
    dist = _distributed()
    box_shape, box_offset = dist._utils.compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    local = t.to_local()
    if not box_offset:  # this rank is not in the mesh: it holds nothing
        box_shape, box_offset = (0,) * t.dim(), (0,) * t.dim()
    if tuple(local.shape) != tuple(box_shape):
        raise ValueError(f"{name} is a DTensor whose local tensor has shape {tuple(local.shape)}, but its "
                         f"placements {_placements_text(t)} give {tuple(box_shape)}")
    box_shape, box_offset = tuple(box_shape), tuple(box_offset)
    return Part(local, box_offset, box_shape,
                stream_map_of_box(tuple(t.shape), box_offset, box_shape, _placements_text(t)))


def batch_part_of(t, name: str) -> Part:
    """:func:`part_of` for per-sample ops: NotImplementedError unless ``t`` is sharded along
    dimension 0 only (or replicated), so that each local sample is a whole sample."""
    part = part_of(t, name)
    if any(s != g for s, g in zip(part.box_shape[1:], tuple(t.shape)[1:])):
        raise NotImplementedError(
            f"{name} is a DTensor with placements {_placements_text(t)}: this op works per sample and serves "
            f"DTensors sharded along the batch dimension (Shard(0)) or replicated")
    return part


def same_layout(a, b) -> bool:
    """Whether two DTensors have one mesh, one global shape and the same placements."""
    return a.device_mesh == b.device_mesh and tuple(a.shape) == tuple(b.shape) and a.placements == b.placements


def locals_alike(values: Sequence[torch.Tensor], like: Sequence[torch.Tensor], name: str,
                 like_name: str) -> List[torch.Tensor]:
    """The local tensors of ``values``, whose k-th is laid out like the k-th of ``like`` (k modulo
    len(like)): both DTensors of one mesh, shape and Shard/Replicate placements, or both plain
    tensors (returned as they are). Errors name ``name[k]``."""
    out = []
    count = len(like)
    for k, v in enumerate(values):
        ref = like[k % count] if count else None
        v_dt, ref_dt = is_dtensor(v), is_dtensor(ref)
        if v_dt != ref_dt:
            raise TypeError(f"{name}[{k}] is {'a DTensor' if v_dt else 'a plain tensor'} but {like_name}"
                            f"[{k % count}] is {'a DTensor' if ref_dt else 'a plain tensor'}: both must be "
                            f"DTensors laid out alike, or both plain tensors")
        if v_dt:
            check_placements(v, f"{name}[{k}]")
            check_placements(ref, f"{like_name}[{k % count}]")
            if not same_layout(v, ref):
                raise ValueError(f"{name}[{k}] (shape {tuple(v.shape)}, placements {_placements_text(v)}) is not "
                                 f"laid out like {like_name}[{k % count}] (shape {tuple(ref.shape)}, placements "
                                 f"{_placements_text(ref)}) on one device mesh")
            v = v.to_local()
        out.append(v)
    return out


def narrow_to_box(value: torch.Tensor, part: Part, shape: Sequence[int], name: str, *, leading: bool = False,
                  mesh=None) -> torch.Tensor:
    """The piece of ``value`` that broadcasts over this rank's box of a tensor of global ``shape``.

    ``value`` broadcasts to ``shape``, aligned on the trailing dimensions (``leading=True``: on the
    leading ones, as per-sample values [B] or [B, 1, ..., 1] are). It is a plain tensor (every rank
    holds all of it) or a DTensor on ``mesh`` whose shard covers the box where it is not 1;
    dimensions of size 1 stay whole. Differentiable (a view of the local tensor)."""
    if is_dtensor(value):
        if mesh is not None and value.device_mesh != mesh:
            raise ValueError(f"{name} is a DTensor on another device mesh than the tensor it scales")
        vpart = part_of(value, name)
        local, v_offset = vpart.local, vpart.box_offset
    else:
        local, v_offset = value, (0,) * value.dim()
    ndim, vdim = len(shape), value.dim()
    pad = ndim - vdim
    if pad < 0:
        raise ValueError(f"{name} of shape {tuple(value.shape)} has more dimensions than the tensor it scales "
                         f"({tuple(shape)})")
    first = 0 if leading else pad  # the dimension of `shape` that value's dimension 0 lines up with
    for k in range(vdim):
        d = first + k
        if value.shape[k] == 1:
            continue
        if value.shape[k] != shape[d]:
            raise ValueError(f"{name} of shape {tuple(value.shape)} does not broadcast to the tensor's shape "
                             f"{tuple(shape)}")
        start = part.box_offset[d] - v_offset[k]
        if start < 0 or start + part.box_shape[d] > local.shape[k]:
            raise ValueError(f"{name} is a DTensor whose shard does not hold the values this rank's shard of "
                             f"the tensor needs (dimension {d}): shard it like the tensor, or replicate it")
        if start != 0 or part.box_shape[d] != local.shape[k]:
            local = local.narrow(k, start, part.box_shape[d])
    return local


def contiguous_strides(shape: Sequence[int]) -> Tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape`` (sizes 0 count as 1, as torch's do)."""
    return tuple(math.prod(max(s, 1) for s in shape[d + 1:]) for d in range(len(shape)))


def wrap_like(local: torch.Tensor, like) -> torch.Tensor:
    """A new DTensor made of this rank's ``local`` result, with ``like``'s mesh, placements and
    global shape and contiguous global strides (no communication; differentiable)."""
    dist = _distributed()
    return dist.DTensor.from_local(local, like.device_mesh, like.placements, run_check=False,
                                   shape=like.shape, stride=contiguous_strides(tuple(like.shape)))


def mesh_of(value) -> Optional[object]:
    return value.device_mesh if is_dtensor(value) else None
