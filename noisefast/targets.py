"""Target noise: label smoothing and mixup.

- :func:`smooth_labels`: ``(1 - eps) * onehot(y) + eps / K``, the convention of
  ``torch.nn.CrossEntropyLoss(label_smoothing=eps)`` (Szegedy et al. 2016, "Rethinking the
  Inception Architecture", section 7).
- :func:`mixup`: Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization" (ICLR): one
  lam ~ Beta(alpha, alpha) per batch, a random permutation of the batch, inputs
  ``lam * x + (1 - lam) * x[perm]`` (one fused pass, :func:`noisefast.ops.mix_rows.mix_rows`) and
  the loss ``lam * CE(y) + (1 - lam) * CE(y[perm])``. alpha = 1.0 is the paper's CIFAR-10 setting,
  0.2 its ImageNet one; alpha <= 0 gives lam = 1 (no mixing), as in the authors' code
  (facebookresearch/mixup-cifar10, train.py).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Optional

import torch
from torch.nn import functional as F

from .beta import beta_variates
from ._checks import check_float_tensor
from ._dtypes import FLOAT_DTYPES
from .ops.mix_rows import KERNELS as MIX_ROWS

__all__ = ["smooth_labels", "mixup", "MixupBatch"]


def _check_num_classes(num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, numbers.Integral):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return int(num_classes)


def _check_dtype(dtype, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32, float16, bfloat16 or float64, got {dtype}")
    return dtype


def _check_class_indices(target: torch.Tensor, num_classes: int, name: str) -> None:
    """Indices in [0, num_classes). Read on the host only for CPU tensors outside torch.compile: a
    CUDA target would cost a device synchronisation (scatter then asserts on the device)."""
    if target.numel() == 0 or target.device.type != "cpu" or torch.compiler.is_compiling():
        return
    low, high = int(target.min()), int(target.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} holds class {low if low < 0 else high}, outside [0, {num_classes})")


def _onehot_mix(target: torch.Tensor, num_classes: int, off: float, on: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
    out = torch.full((*target.shape, num_classes), off, dtype=dtype, device=target.device)
    return out.scatter_(-1, target.unsqueeze(-1), on)


def smooth_labels(target: torch.Tensor, num_classes: int, eps: float, *,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """Label smoothing: ``(1 - eps) * onehot(target) + eps / num_classes``.

    The convention of ``torch.nn.CrossEntropyLoss(label_smoothing=eps)``:
    ``F.cross_entropy(logits, smooth_labels(y, K, eps))`` equals
    ``F.cross_entropy(logits, y, label_smoothing=eps)``. Source: Szegedy et al. 2016, "Rethinking
    the Inception Architecture for Computer Vision", section 7 (docs/formulas.md section 8).

    Args:
        target: class indices, an integer tensor of any shape [*] with values in [0, num_classes)
            (checked on CPU tensors); or soft / one-hot targets, a float tensor [*, num_classes]
            whose rows are probability vectors.
        num_classes: K >= 1.
        eps: smoothing in [0, 1]; 0 returns the one-hot (or the soft targets unchanged in value).
        dtype: result dtype (float32/float16/bfloat16/float64); default float32 for index targets
            and the target's dtype for soft ones.

    Returns:
        A float tensor [*, K] on target's device: ``1 - eps + eps / K`` at the target class and
        ``eps / K`` elsewhere; for soft targets ``(1 - eps) * target + eps / K``.
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    num_classes = _check_num_classes(num_classes)
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0.0 <= float(eps) <= 1.0:
        raise ValueError(f"eps must be a number in [0, 1], got {eps!r}")
    eps = float(eps)
    if target.is_floating_point():
        if target.dim() < 1 or target.shape[-1] != num_classes:
            raise ValueError(f"target of floats must have num_classes = {num_classes} entries in its last "
                             f"dimension, got shape {tuple(target.shape)}")
        dtype = _check_dtype(dtype, target.dtype)
        return ((1.0 - eps) * target.to(dtype) + eps / num_classes).to(dtype)
    if target.dtype == torch.bool or target.is_complex():
        raise TypeError(f"target must hold integer class indices or float probabilities, got {target.dtype}")
    dtype = _check_dtype(dtype, torch.float32)
    _check_class_indices(target, num_classes, "target")
    off = eps / num_classes
    on = torch.full(target.shape + (1,), 1.0 - eps + off, dtype=dtype, device=target.device)
    return _onehot_mix(target.long(), num_classes, off, on, dtype)


class MixupBatch(NamedTuple):
    """A mixed batch (see :func:`mixup`).

    Attributes:
        x: the mixed inputs ``lam * x + (1 - lam) * x[index]``, shaped and typed like x.
        y_a: the targets as given (indices [B] or soft targets [B, ...]).
        y_b: the partners' targets ``y[index]``.
        lam: the mixing weight, a 0-d float64 tensor on x's device (never read on the host, so no
            device synchronisation; ``float(batch.lam)`` reads it).
        index: the permutation, int64 [B] on x's device.
    """
    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: torch.Tensor
    index: torch.Tensor

    def loss(self, output: torch.Tensor, criterion: Callable = F.cross_entropy) -> torch.Tensor:
        """``lam * criterion(output, y_a) + (1 - lam) * criterion(output, y_b)`` (Zhang et al. 2018;
        mixup-cifar10's mixup_criterion). ``criterion`` is any loss ``(output, target) -> tensor``
        (reduced or not); lam is cast to the loss's dtype."""
        loss_a = criterion(output, self.y_a)
        loss_b = criterion(output, self.y_b)
        lam = self.lam.to(loss_a.dtype)
        return lam * loss_a + (1 - lam) * loss_b

    def targets(self, num_classes: Optional[int] = None, *, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """Soft targets ``lam * onehot(y_a) + (1 - lam) * onehot(y_b)``: float [B, K].

        For index targets ``num_classes`` is required (default dtype float32); for soft targets y
        ([B, K] floats, e.g. from :func:`smooth_labels`) it is optional and, when given, checked,
        and the result is ``lam * y_a + (1 - lam) * y_b`` in y's dtype. With these targets,
        ``F.cross_entropy(output, batch.targets(K))`` equals ``batch.loss(output)``.
        """
        if self.y_a.is_floating_point():
            if num_classes is not None and (self.y_a.dim() < 1 or self.y_a.shape[-1] != _check_num_classes(num_classes)):
                raise ValueError(f"num_classes is {num_classes} but the soft targets have shape {tuple(self.y_a.shape)}")
            dtype = _check_dtype(dtype, self.y_a.dtype)
            lam = self.lam.to(dtype)
            return lam * self.y_a.to(dtype) + (1 - lam) * self.y_b.to(dtype)
        if num_classes is None:
            raise ValueError("num_classes is required for index targets")
        num_classes = _check_num_classes(num_classes)
        dtype = _check_dtype(dtype, torch.float32)
        _check_class_indices(self.y_a, num_classes, "y")
        lam = self.lam.to(dtype)
        out = torch.zeros((*self.y_a.shape, num_classes), dtype=dtype, device=self.y_a.device)
        out.scatter_add_(-1, self.y_a.long().unsqueeze(-1), lam.expand(*self.y_a.shape, 1))
        out.scatter_add_(-1, self.y_b.long().unsqueeze(-1), (1 - lam).expand(*self.y_b.shape, 1))
        return out


def mixup(x: torch.Tensor, y: torch.Tensor, alpha: float, *,
          generator: Optional[torch.Generator] = None) -> MixupBatch:
    """mixup (Zhang et al. 2018): mix a batch with a shuffled copy of itself.

    lam ~ Beta(alpha, alpha), one per batch; index = a uniformly random permutation of the batch;
    ``x~ = lam * x + (1 - lam) * x[index]``, ``loss = lam * CE(out, y) + (1 - lam) * CE(out, y[index])``
    (docs/formulas.md section 8; facebookresearch/mixup-cifar10). alpha = 1.0 for CIFAR-10, 0.2 for
    ImageNet in the paper; alpha <= 0 means lam = 1 (the authors' code), so x~ equals x.

    Args:
        x: inputs, float32/float16/bfloat16/float64 [B, *]; gradients flow back to x.
        y: targets with B rows on x's device: class indices [B] or soft targets [B, K].
        alpha: the Beta parameter, a finite real number.
        generator: where lam and the permutation are drawn (default: the default generator of x's
            device). lam comes from :func:`noisefast.beta.beta_variates` (Marsaglia-Tsang Gamma
            variates with a fixed number of candidates), the permutation from ``torch.randperm``:
            both on the generator's device and without host synchronisation, so
            ``torch.manual_seed`` (or the generator's seed) reproduces the batch.

    Returns:
        :class:`MixupBatch` ``(x, y_a, y_b, lam, index)`` with ``.loss(output, criterion)`` and
        ``.targets(num_classes)``. Example::

            batch = noisefast.mixup(images, labels, alpha=1.0)
            loss = batch.loss(model(batch.x))
    """
    check_float_tensor(x, "x")
    if x.dim() < 1:
        raise ValueError("x must have a batch dimension (dim >= 1), got a 0-d tensor")
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dim() < 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must have x's batch size {x.shape[0]} in its first dimension, got shape {tuple(y.shape)}")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not math.isfinite(float(alpha)):
        raise ValueError(f"alpha must be a finite real number, got {alpha!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    alpha = float(alpha)
    draw_on = x.device if generator is None else generator.device
    if alpha > 0:
        lam = beta_variates(alpha, alpha, 1, generator=generator, device=draw_on).reshape(())
    else:
        lam = torch.ones((), dtype=torch.float64, device=draw_on)
    index = torch.randperm(x.shape[0], generator=generator, device=draw_on)
    lam = lam.to(x.device, non_blocking=True)
    index = index.to(x.device, non_blocking=True)
    return MixupBatch(MIX_ROWS.call(x, index, lam), y, y[index], lam, index)
