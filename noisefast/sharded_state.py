"""Sharded (DTensor) weights in the EMA's state: the layout of a shard, the DTensor a checkpoint
holds, and the full tensor behind the shards.

FSDP2 (``torch.distributed.fsdp.fully_shard``) and tensor parallelism make a model's parameters
DTensors: each rank holds a local shard (``DTensor.to_local()``) of a global tensor laid out over a
DeviceMesh by placements (Shard(dim) or Replicate() per mesh dimension). An EMA is elementwise, so
:class:`noisefast.EMA` keeps plain float32 shadows of the local shards and averages them with no
communication; this module gives those shards back their global meaning where it matters:

- in ``EMA.state_dict()``, as DTensors with the parameter's mesh, placements, global shape and
  stride (:func:`as_dtensor`, no copy), which ``torch.distributed.checkpoint`` saves and loads,
  resharding onto another world size;
- in ``EMA.full_averaged()``, gathered into the full tensor on every rank (:func:`gathered`, a
  collective), for inference or an evaluation on one device.

Placements other than Shard and Replicate (Partial: a pending sum whose shards are not values)
raise where the EMA meets them (:func:`layout_of`). torch.distributed is imported only when a
DTensor is seen (the module is then already loaded), so a model without one pays nothing.
"""
from __future__ import annotations

import sys
from typing import NamedTuple, Optional, Tuple

import torch


class ShardLayout(NamedTuple):
    """Where a local shard sits in its global tensor: the DTensor's mesh, placements, shape and stride."""
    mesh: object
    placements: Tuple[object, ...]
    shape: torch.Size
    stride: Tuple[int, ...]


def dtensor_class():
    """torch.distributed.tensor.DTensor if that module is loaded (any DTensor in use loaded it), else None."""
    module = sys.modules.get("torch.distributed.tensor")
    return None if module is None else module.DTensor


def is_dtensor(t) -> bool:
    cls = dtensor_class()
    return cls is not None and isinstance(t, cls)


def local_tensor(t: torch.Tensor) -> torch.Tensor:
    """The tensor whose memory holds this process's elements of ``t``: its local shard for a
    DTensor (FSDP2, tensor parallelism; a view, so writing into it writes the parameter), ``t``
    itself otherwise."""
    return t.to_local() if is_dtensor(t) else t


def reshard_fsdp(module) -> bool:
    """Reshard every FSDP2 module in ``module`` (``FSDPModule.reshard``, no communication), so
    that its parameters are the sharded DTensors again: after a forward pass under no_grad the
    root module keeps them unsharded (plain tensors) until the next backward. Whether any was
    found (False without FSDP2 loaded)."""
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return False
    found = False
    for m in module.modules():
        if isinstance(m, fsdp.FSDPModule):
            m.reshard()
            found = True
    return found


def layout_of(t: torch.Tensor, name: str) -> Optional[ShardLayout]:
    """The layout of a DTensor ``t`` (None for a plain tensor); ValueError naming ``name`` and the
    placement for a placement whose local shard is not the values (Partial)."""
    if not is_dtensor(t):
        return None
    for placement in t.placements:
        if not (placement.is_shard() or placement.is_replicate()):
            raise ValueError(f"{name} is a DTensor with placement {type(placement).__name__} ({placement}): "
                             "noisefast serves Shard and Replicate placements (redistribute it first)")
    return ShardLayout(t.device_mesh, tuple(t.placements), t.shape, tuple(t.stride()))


def as_dtensor(local: torch.Tensor, layout: ShardLayout):
    """``local`` (this rank's shard) as the DTensor ``layout`` describes, sharing its memory."""
    return dtensor_class().from_local(local, layout.mesh, layout.placements, shape=layout.shape,
                                      stride=layout.stride, run_check=False)


def gathered(local: torch.Tensor, layout: ShardLayout) -> torch.Tensor:
    """The full tensor of which ``local`` is this rank's shard, as a plain tensor on ``local``'s
    device. A collective: every rank of the mesh must call it (in the same order)."""
    mesh_device = torch.device(layout.mesh.device_type)
    if mesh_device.type != "cpu" and mesh_device.index is None:
        mesh_device = torch.device(mesh_device.type, torch.accelerator.current_device_index())
    full = as_dtensor(local.to(mesh_device), layout).full_tensor()
    return full.to(local.device)


def check_sharded_value(value, layout: ShardLayout, where: str) -> torch.Tensor:
    """The local shard of ``value`` if it is a DTensor laid out as ``layout`` (same mesh,
    placements and global shape), else a TypeError/ValueError naming ``where``."""
    if not is_dtensor(value):
        raise TypeError(f"{where} must be a DTensor (the EMA's weight is sharded over {layout.mesh}), got "
                        f"{type(value).__name__}; torch.distributed.checkpoint loads a checkpoint of another "
                        "sharding or world size into EMA.state_dict()")
    if value.device_mesh != layout.mesh or tuple(value.placements) != layout.placements:
        raise ValueError(f"{where} is laid out as {tuple(value.placements)} over {value.device_mesh}, the EMA's "
                         f"weight as {layout.placements} over {layout.mesh}")
    if value.shape != layout.shape:
        raise ValueError(f"{where} has global shape {tuple(value.shape)}, expected {tuple(layout.shape)}")
    return value.to_local()
