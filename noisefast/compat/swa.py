"""``get_ema_multi_avg_fn`` for torch.optim.swa_utils.AveragedModel (and Lightning's ``WeightAveraging``)
on noisefast's fused EMA kernel.

``AveragedModel(model, multi_avg_fn=noisefast.get_ema_multi_avg_fn(0.999))`` replaces
``torch.optim.swa_utils.get_ema_multi_avg_fn(0.999)``; Lightning takes it as
``WeightAveraging(multi_avg_fn=noisefast.get_ema_multi_avg_fn(0.999))``. AveragedModel copies the
model at its first ``update_parameters`` and then calls the function with the averaged and current
tensors grouped by device and dtype; float32, float16, bfloat16 and float64 groups are averaged by
one ``noisefast::ema_update_`` call, ``ema.lerp_(current, 1 - decay)``, bit for bit what torch's
``_foreach_lerp_`` computes. Other groups (integer buffers such as BatchNorm's
num_batches_tracked with use_buffers=True, complex tensors) go to torch's own function, unchanged.
"""
from __future__ import annotations

from typing import Callable, List

import torch

from .._dtypes import FLOAT_DTYPES
from ..ops.ema_update import check_decay_number, ema_update_


def get_ema_multi_avg_fn(decay: float = 0.999) -> Callable[[List[torch.Tensor], List[torch.Tensor], object], None]:
    """An AveragedModel ``multi_avg_fn``: ``ema = decay * ema + (1 - decay) * current`` in place
    over lists of tensors (decay a number in [0, 1]; the third argument, AveragedModel's count of
    averaged models, is not used)."""
    decay = check_decay_number(decay, "decay")
    torch_fn = torch.optim.swa_utils.get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def ema_update(ema_param_list: List[torch.Tensor], current_param_list: List[torch.Tensor], _num_averaged) -> None:
        if len(ema_param_list) != len(current_param_list):
            raise ValueError(f"ema_param_list has {len(ema_param_list)} tensors but current_param_list has "
                             f"{len(current_param_list)}")
        fused = [i for i, (e, c) in enumerate(zip(ema_param_list, current_param_list))
                 if e.dtype in FLOAT_DTYPES and c.dtype in FLOAT_DTYPES]
        if len(fused) == len(ema_param_list):
            ema_update_(list(ema_param_list), list(current_param_list), decay)
            return
        fused_set = set(fused)
        rest = [i for i in range(len(ema_param_list)) if i not in fused_set]
        if fused:
            ema_update_([ema_param_list[i] for i in fused], [current_param_list[i] for i in fused], decay)
        torch_fn([ema_param_list[i] for i in rest], [current_param_list[i] for i in rest], _num_averaged)

    return ema_update
