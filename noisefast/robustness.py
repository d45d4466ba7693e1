"""Robustness to input noise: a model's metric measured at several test-time noise levels.

For each std in ``stds`` the model is evaluated on the data with inputs ``x + std * z``,
z ~ N(0, 1) fresh for every batch (:func:`noisefast.gaussian_noise`; std = 0 is the clean data).
Tracking this curve during training is how noise-injection regularisers are usually judged
(docs/formulas.md, "Regularising noise", robustness tracked during training; e.g. Hendrycks & Dietterich 2019,
"Benchmarking Neural Network Robustness to Common Corruptions and Perturbations", Gaussian noise).
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn
from torch.nn import functional as F

from .ops.gaussian_noise import gaussian_noise

__all__ = ["RobustnessCurve", "robustness_curve", "accuracy", "cross_entropy"]

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _class_of(y: torch.Tensor) -> torch.Tensor:
    return y.argmax(-1) if y.is_floating_point() else y


def accuracy(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy per sample: ``output.argmax(-1) == y`` as float [B] (soft y: its argmax)."""
    return (output.argmax(-1) == _class_of(y)).to(torch.float32)


def cross_entropy(output: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample, float [B] (index or soft targets, as ``F.cross_entropy``)."""
    return F.cross_entropy(output.float(), y.float() if y.is_floating_point() else y, reduction="none")


METRICS: Dict[str, Metric] = {"accuracy": accuracy, "loss": cross_entropy}


@dataclass(frozen=True)
class RobustnessCurve:
    """The metric at each test-time noise std.

    Attributes:
        stds: the noise stds, in the order given.
        values: the metric at each std (mean over the samples).
        count: how many samples each value averages.
        metric: the metric's name.
    """
    stds: Tuple[float, ...]
    values: Tuple[float, ...]
    count: int
    metric: str = "accuracy"

    def area(self) -> float:
        """The robustness area: the mean of the metric over the stds (each std weighs the same, so
        compare areas of curves with the same stds)."""
        return math.fsum(self.values) / len(self.values)

    def as_dict(self) -> Dict[float, float]:
        """``{std: value}``."""
        return dict(zip(self.stds, self.values))

    def to_markdown(self, digits: int = 4) -> str:
        """A two-row markdown table: noise std, metric."""
        head = "| noise std | " + " | ".join(f"{s:g}" for s in self.stds) + " |"
        rule = "|---|" + "---:|" * len(self.stds)
        row = f"| {self.metric} | " + " | ".join(f"{v:.{digits}f}" for v in self.values) + " |"
        return "\n".join([head, rule, row])

    def __str__(self) -> str:
        return self.to_markdown()


def check_stds(stds) -> Tuple[float, ...]:
    """``stds`` (a sequence of numbers or a tensor) as a tuple of floats, each finite and >= 0, not
    empty; else a TypeError/ValueError naming ``stds``."""
    if isinstance(stds, torch.Tensor):
        stds = stds.detach().reshape(-1).tolist()
    if isinstance(stds, numbers.Real) or not isinstance(stds, Iterable):
        raise TypeError(f"stds must be a sequence of numbers >= 0, got {type(stds).__name__}")
    values = []
    for s in stds:
        if isinstance(s, bool) or not isinstance(s, numbers.Real) or not math.isfinite(float(s)) or s < 0:
            raise ValueError(f"stds must hold finite numbers >= 0, got {s!r}")
        values.append(float(s))
    if not values:
        raise ValueError("stds must not be empty")
    return tuple(values)


def metric_fn(metric) -> Tuple[Metric, str]:
    """``(callable, name)`` of a metric given by name ("accuracy", "loss") or as a callable."""
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric must be a callable or one of {sorted(METRICS)}, got {metric!r}")
        return METRICS[metric], metric
    if not callable(metric):
        raise TypeError(f"metric must be a callable (output, y) -> tensor or a name, got {type(metric).__name__}")
    return metric, getattr(metric, "__name__", type(metric).__name__)


def as_batches(data) -> Iterable:
    """data as an iterable of (x, y) batches: a single (x, y) pair of tensors is one batch."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return [tuple(data)]
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(f"data must be an (x, y) pair of tensors or an iterable of (x, y) batches "
                        f"(e.g. a DataLoader), got {type(data).__name__}")
    return data


def _model_device(model) -> Optional[torch.device]:
    if isinstance(model, nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return None


def robustness_curve(model: Callable[[torch.Tensor], torch.Tensor], data, stds: Sequence[float],
                     metric: Union[str, Metric] = "accuracy", *, generator: Optional[torch.Generator] = None,
                     device: Union[str, torch.device, None] = None) -> RobustnessCurve:
    """Evaluate ``model`` on ``data`` with inputs perturbed by Gaussian noise of each std.

    For each std: ``metric(model(x + std * z), y)`` averaged over every sample of ``data``, with z
    ~ N(0, 1) drawn afresh per batch and std (:func:`noisefast.gaussian_noise`); std = 0 uses the
    clean inputs. The data is read once (each batch is evaluated at every std in turn), so a
    one-shot iterator works and a DataLoader's random augmentation is the same at every std.

    Args:
        model: an ``nn.Module`` (run in eval mode under ``torch.no_grad``; the train/eval mode of
            each of its submodules is restored afterwards, also on error) or any callable x -> output.
        data: an iterable of (x, y) batches (e.g. a DataLoader) or a single (x, y) pair. x is a
            float tensor [B, *]; y whatever the metric takes.
        stds: test-time noise stds, numbers >= 0 (or a 1-d tensor), in the order to report.
        metric: "accuracy" (top-1, the default), "loss" (cross-entropy), or a callable
            ``(output, y) -> tensor``: per-sample values [B] (averaged over samples) or a scalar
            mean over the batch (weighted by batch size).
        generator: where the noise seeds are drawn (default: the default generator of x's
            device); the same generator state gives the same curve.
        device: where to move each batch (default: the device of the model's first parameter,
            else where the batch is).

    Returns:
        :class:`RobustnessCurve` (stds, values, count, metric), with ``.as_dict()`` and
        ``.to_markdown()``.
    """
    stds = check_stds(stds)
    fn, name = metric_fn(metric)
    batches = as_batches(data)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    device = torch.device(device) if device is not None else _model_device(model)
    modes = [(m, m.training) for m in model.modules()] if isinstance(model, nn.Module) else []
    sums: List[Optional[torch.Tensor]] = [None] * len(stds)
    count = 0
    try:
        if isinstance(model, nn.Module):
            model.eval()
        with torch.no_grad():
            for i, batch in enumerate(batches):
                if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                    raise TypeError(f"data must yield (x, y) batches, batch {i} is a {type(batch).__name__}")
                x, y = batch[0], batch[1]
                if not isinstance(x, torch.Tensor) or x.dim() < 1:
                    raise TypeError(f"data: batch {i} has no tensor x with a batch dimension")
                if device is not None:
                    x = x.to(device, non_blocking=True)
                    y = y.to(device, non_blocking=True) if isinstance(y, torch.Tensor) else y
                size = x.shape[0]
                for j, std in enumerate(stds):
                    inputs = x if std == 0 else gaussian_noise(x, std, generator=generator)
                    value = torch.as_tensor(fn(model(inputs), y))
                    if value.dim() == 0:
                        total = value.detach().double() * size
                    elif value.shape == (size,):
                        total = value.detach().double().sum()
                    else:
                        raise ValueError(f"metric must return one value per sample ([{size}]) or a scalar, "
                                         f"got shape {tuple(value.shape)}")
                    sums[j] = total if sums[j] is None else sums[j] + total.to(sums[j].device)
                count += size
    finally:
        for m, mode in modes:
            m.training = mode
    if count == 0:
        raise ValueError("data holds no samples")
    # one host read per std at the end, not one per batch
    values = tuple(float(s) / count for s in sums)
    return RobustnessCurve(stds, values, count, name)
