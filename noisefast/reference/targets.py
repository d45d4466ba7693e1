"""Reference of the target-noise functions without a kernel (label smoothing): the textbook eager
formula the public :func:`noisefast.smooth_labels` is tested against. mixup's fused pass is
noisefast/reference/mix_rows.py."""
from __future__ import annotations

import torch


def smooth_labels(target: torch.Tensor, num_classes: int, eps: float) -> torch.Tensor:
    """(1 - eps) * onehot(target) + eps / num_classes (index targets, int64 [*] -> float32 [*, K])."""
    onehot = torch.nn.functional.one_hot(target, num_classes).to(torch.float32)
    return (1 - eps) * onehot + eps / num_classes
