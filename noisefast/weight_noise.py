"""Weight noise: the forward pass sees w + N(0, std_t^2), gradients apply to the clean w."""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch import nn

from .ops.foreach_gaussian_noise import foreach_gaussian_noise
from .regularizers import ScheduledNoise

__all__ = ["WeightNoise"]

ParamFilter = Callable[[str, nn.Parameter], bool]


def weights_only(name: str, param: nn.Parameter) -> bool:
    """A filter for :class:`WeightNoise`: matrices and kernels (dim >= 2), not biases or norm scales."""
    return param.dim() >= 2


class WeightNoise(ScheduledNoise):
    """Runs ``module`` with noisy weights in training mode: ``w~ = w + std_t * z``, z ~ N(0, 1) drawn
    afresh for every forward; gradients apply to the clean ``w``; eval mode runs the clean module.

    Weight noise as a regulariser: Graves 2011 ("Practical variational inference for neural
    networks"), An 1996; docs/formulas.md, "Regularising noise": w + Normal(0, std^2) for the
    forward pass, gradients to the clean w. ``std_t = std * schedule(num_steps)``
    (:class:`ScheduledNoise`; call :meth:`step` once per optimiser step when a schedule is given).

    Mechanism (why a wrapper with ``torch.func.functional_call``): each training forward builds
    noisy copies of the selected parameters in one fused pass (one launch per device,
    ``noisefast.foreach_gaussian_noise``: each weight read once, each copy written once) and
    runs the wrapped module on them with ``torch.func.functional_call``. The copies' gradient is
    the identity, so backward accumulates d loss / d w~ into the clean parameters' ``.grad``. The
    clean weights are never written, so they are bit-exactly what they were, by construction,
    whatever happens in between (an exception in forward, a backward never run, retain_graph,
    several forwards before one backward, torch.compile) — which in-place perturb-and-restore
    cannot promise (w + z - z is not w in floating point, and keeping a clean copy costs the
    same memory). Memory: the noisy copies live as long as the graph needs them (layers save
    their weights for backward anyway); no noise tensor is stored, and nothing is saved by the
    noise op itself.

    Which parameters: by default every floating-point parameter that requires grad; ``filter``
    (a callable ``(name, param) -> bool``, e.g. :func:`weights_only`) narrows that. A parameter
    shared by several submodules (tied weights) gets one noise draw, seen by every use. Parameters
    on several devices: one launch and one seed per device.

    Noise stream: per forward and per device, one seed drawn from ``generator`` (default: the
    device's default generator); the selected parameters of that device, in
    ``module.named_parameters()`` order, are the tensors of one ``foreach_gaussian_noise`` call (the
    k-th gets stream elements ``base_k ..``, see :func:`noisefast.foreach_gaussian_noise_`).

    Data parallelism: wrap the model before DDP (``DDP(WeightNoise(net, std))``); DDP's gradient
    hooks sit on the clean parameters, which receive the gradients as usual. Each rank draws its
    own noise (more perturbations per step); seed every rank's ``generator`` alike to make the
    noise identical instead.

    state_dict: the wrapped module is the child ``module``, so keys are ``module.<name>`` (as with
    DistributedDataParallel) plus ``_extra_state`` (the schedule's ``num_steps``) and ``std`` when
    std is a tensor. To save or load the bare model use ``wrapper.module.state_dict()`` /
    ``wrapper.module.load_state_dict(...)``; ``wrapper.state_dict()`` round-trips the wrapper.

    Args:
        module: the ``nn.Module`` to run with noisy weights.
        std: the noise standard deviation, a number >= 0 or a 0-d float tensor (a buffer).
        schedule: None or a callable ``step -> factor >= 0`` (``noisefast.schedules``).
        generator: where the seeds are drawn.
        filter: None or a callable ``(name, param) -> bool`` choosing the noisy parameters.

    Shapes and dtypes: those of ``module``; parameters float32, float16, bfloat16 or float64 (noise
    computed in float32, float64 for float64, rounded once to the parameter's dtype).

    Example::

        model = WeightNoise(net, 0.01, filter=noisefast.weight_noise.weights_only)
        loss = criterion(model(x), y); loss.backward(); optimizer.step()   # optimizer over net's params
        torch.save(model.module.state_dict(), "net.pt")
    """

    def __init__(self, module: nn.Module, std: Union[float, torch.Tensor], schedule=None, *,
                 generator: Optional[torch.Generator] = None, filter: Optional[ParamFilter] = None):
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if isinstance(std, torch.Tensor) and std.dim() != 0:
            raise ValueError(f"std must be a number or a 0-d tensor, got shape {tuple(std.shape)}")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if filter is not None and not callable(filter):
            raise TypeError(f"filter must be None or a callable (name, param) -> bool, got {type(filter).__name__}")
        super().__init__(std, schedule)
        self.module = module
        self.generator = generator
        self.filter = filter

    def noisy_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that receive noise, in ``named_parameters()`` order (tied
        parameters once, under their first name)."""
        chosen = []
        for name, p in self.module.named_parameters():
            if p.is_floating_point() and p.requires_grad and (self.filter is None or self.filter(name, p)):
                chosen.append((name, p))
        return chosen

    def forward(self, *args, **kwargs):
        if not self.training:
            return self.module(*args, **kwargs)
        std = self.magnitude()
        if not isinstance(std, torch.Tensor) and std == 0.0:
            return self.module(*args, **kwargs)  # the same values and gradients, without the copies
        by_device: "OrderedDict[torch.device, List[Tuple[str, nn.Parameter]]]" = OrderedDict()
        for name, p in self.noisy_parameters():
            by_device.setdefault(p.device, []).append((name, p))
        if not by_device:
            return self.module(*args, **kwargs)
        noisy = {}
        for device, named in by_device.items():
            device_std = std.to(device) if isinstance(std, torch.Tensor) else std
            copies = foreach_gaussian_noise([p for _, p in named], device_std, generator=self.generator)
            noisy.update((name, c) for (name, _), c in zip(named, copies))
        return torch.func.functional_call(self.module, noisy, args, kwargs)

    def extra_repr(self) -> str:
        text = self._std_repr()
        if self.filter is not None:
            text += f", filter={getattr(self.filter, '__name__', self.filter)!r}"
        return text
