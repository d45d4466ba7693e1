"""Annealed Gaussian gradient noise (Neelakantan et al. 2015, "Adding Gradient Noise Improves
Learning for Very Deep Networks", arXiv:1511.06807)."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any, Dict, Iterable, List, Mapping, Optional, Union

import torch
import torch.distributed as dist

from ._compile import StepCounter, eager_under_compile
from ._checks import check_int, check_real
from .magnitude import check_schedule, check_step, is_stateful, schedule_at
from .ops.foreach_gaussian_noise import foreach_gaussian_noise_
from .random import SEED_BOUND, check_generator_state

__all__ = ["GradientNoise"]

DISTRIBUTED_MODES = ("agree", "check", "local")


def process_group_size() -> int:
    """The default process group's world size (1 when torch.distributed is not initialised)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _collect_params(params) -> List[torch.Tensor]:
    """The tensors of an iterable of tensors, or of param-group dicts {"params": ...} like an optimizer's."""
    if isinstance(params, torch.Tensor):
        raise TypeError("params must be an iterable of tensors or of param-group dicts, got a single tensor "
                        "(wrap it in a list)")
    try:
        items = list(params)
    except TypeError:
        raise TypeError(f"params must be an iterable of tensors or of param-group dicts, "
                        f"got {type(params).__name__}") from None
    out: List[torch.Tensor] = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping):
            if "params" not in item:
                raise ValueError(f"params[{i}] is a param group without a 'params' entry")
            group = item["params"]
            group = [group] if isinstance(group, torch.Tensor) else list(group)
            for j, p in enumerate(group):
                if not isinstance(p, torch.Tensor):
                    raise TypeError(f"params[{i}]['params'][{j}] must be a tensor, got {type(p).__name__}")
                out.append(p)
        elif isinstance(item, torch.Tensor):
            out.append(item)
        else:
            raise TypeError(f"params[{i}] must be a tensor or a param-group dict, got {type(item).__name__}")
    seen = set()
    for p in out:
        if id(p) in seen:
            raise ValueError("params lists a tensor more than once: its gradient would receive noise twice")
        seen.add(id(p))
    return out


class GradientNoise:
    """Adds annealed Gaussian noise to gradients: ``g <- g + N(0, sigma_t^2)``, in one fused launch
    per device (:func:`noisefast.foreach_gaussian_noise_`).

    Neelakantan et al. 2015 (arXiv:1511.06807), eq. (1): the VARIANCE anneals,

        sigma_t^2 = eta / (1 + t)^gamma,   i.e.   std_t = sqrt(eta / (1 + t)^gamma),

    with t the number of noise steps taken so far (0 at the first :meth:`step`), times
    ``schedule(t)`` when a magnitude schedule is given. The paper uses
    gamma = 0.55 and eta in {0.01, 0.3, 1.0}. (Some ports use eta / (1 + t)^gamma as the std: that is
    not the paper's schedule.)

    Args:
        params: an iterable of tensors (Parameters), or of param-group dicts like an optimizer's
            (``optimizer.param_groups`` works; only their "params" are used). A tensor may appear
            only once.
        eta: the initial variance, >= 0.
        gamma: the annealing exponent, >= 0.
        generator: where each step's seed is drawn (default: the default generator of each
            gradient's device; under torch.distributed, see ``distributed``).
        schedule: None, or a callable ``t -> factor >= 0`` (``noisefast.schedules``) that multiplies
            std_t, e.g. ``noisefast.schedules.adaptive(...)``, reduced when a robustness tracker
            signals overuse; a stateful schedule's state is saved in :meth:`state_dict`.
        distributed: what ranks do about their seeds when torch.distributed is initialised with
            more than one process (checked once, when built or at the first step, whichever
            first sees the process group):

            - ``"agree"`` (default): every rank draws the same seeds. Without ``generator``, rank
              0 draws a seed from its default CPU generator (every rank draws one, so default
              generators stay in step) and broadcasts it; each rank seeds a private generator on
              the parameters' device with it (saved in :meth:`state_dict`). With ``generator``,
              rank 0's generator state is broadcast into every rank's generator. One broadcast,
              once.
            - ``"check"``: the ranks' generator states (``generator``, or the default generator
              of the parameters' device) are compared once; RuntimeError if any rank differs.
            - ``"local"``: no communication; each rank draws from its own generator (for noise
              that is meant to differ between ranks).

    Where to call it: after the gradients are final and before the optimizer uses them::

        scaler.scale(loss).backward()        # DDP all-reduces the gradients during backward
        scaler.unscale_(optimizer)            # noise is added to the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(...)   # (optional; before or after the noise, as you intend)
        grad_noise.step()                     # g += N(0, eta / (1 + t)^gamma); t += 1
        scaler.step(optimizer); scaler.update()

    Under DistributedDataParallel the noise must be identical on every rank, added after the
    all-reduce, or the replicas drift apart: the default ``distributed="agree"`` makes every rank
    draw the same seeds, whatever the ranks' own generators hold. Under FSDP2 the gradients are
    DTensors (each rank holds a shard); they are passed to the op as they are, which draws each
    element's noise by its global index, with the seed agreed the same way. With GradScaler, a
    step that the scaler skips (inf/NaN gradients) still advances t.

    Shapes and dtypes: any gradient shapes; float32, float16, bfloat16, float64 gradients (noise
    computed in float32, float64 for float64, rounded once). Gradients that are None are skipped;
    sparse gradients raise TypeError.
    """

    def __init__(self, params: Iterable[Union[torch.Tensor, Dict[str, Any]]], eta: float = 0.3,
                 gamma: float = 0.55, *, generator: Optional[torch.Generator] = None, schedule=None,
                 distributed: str = "agree"):
        self.params = _collect_params(params)
        self.eta = check_real(eta, "eta", nonnegative=True)
        self.gamma = check_real(gamma, "gamma", nonnegative=True)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        self.generator = generator
        self.schedule = check_schedule(schedule)
        if distributed not in DISTRIBUTED_MODES:
            raise ValueError(f"distributed must be one of {DISTRIBUTED_MODES}, got {distributed!r}")
        self.distributed = distributed
        # t on the parameters' device: a compiled (or CUDA-graph) step computes sigma_t from it there.
        self._counter = StepCounter(0, self.params[0].device if self.params else None)
        self._agreed_generator: Optional[torch.Generator] = None  # "agree" without generator=
        self._ranks_settled = False  # the process-group check of `distributed` was made
        self._settle_ranks()

    def _settle_ranks(self) -> None:
        """Apply ``distributed`` once, when a process group of more than one rank is first seen."""
        if self._ranks_settled or process_group_size() == 1:
            return
        self._settle_ranks_eagerly()

    @eager_under_compile
    def _settle_ranks_eagerly(self) -> None:
        self._ranks_settled = True
        if self.distributed == "local":
            return
        device = self.params[0].device if self.params else torch.device("cpu")
        if device.type == "meta":
            device = torch.device("cpu")
        if self.distributed == "agree":
            if self.generator is not None:
                box = [self.generator.get_state()]
                dist.broadcast_object_list(box, src=0)
                self.generator.set_state(box[0])
            else:
                box = [int(torch.randint(0, SEED_BOUND, (), dtype=torch.int64))]
                dist.broadcast_object_list(box, src=0)
                self._agreed_generator = torch.Generator(device=device).manual_seed(box[0])
            return
        if self.generator is not None:
            state = self.generator.get_state()
        else:
            state = torch.cuda.get_rng_state(device) if device.type == "cuda" else \
                torch.get_rng_state() if device.type == "cpu" else torch.get_device_module(device).get_rng_state()
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, bytes(state.numpy()))
        differing = [r for r, other in enumerate(states) if other != states[0]]
        if differing:
            which = "generator" if self.generator is not None else f"default {device} generator"
            raise RuntimeError(f"GradientNoise(distributed='check'): the {which} of ranks {differing} differs from "
                               "rank 0's, so the replicas would receive different noise and drift apart; seed it "
                               "identically on every rank, or use distributed='agree'")

    def _seed_source(self) -> Optional[torch.Generator]:
        return self.generator if self.generator is not None else self._agreed_generator

    @property
    def t(self) -> int:
        """The number of noise steps taken (reads the device counter once after compiled steps)."""
        return self._counter.value

    @t.setter
    def t(self, value: int) -> None:
        self._counter.set(check_int(value, "t", 0))

    def std(self, step: Optional[int] = None) -> float:
        """sigma_t = sqrt(eta / (1 + t)^gamma) (times ``schedule(t)``) at ``step`` (default: the step
        the next :meth:`step` uses)."""
        t = self.t if step is None else check_step(step)
        sigma = math.sqrt(self.eta / (1.0 + t) ** self.gamma)
        if self.schedule is not None:
            sigma *= check_real(self.schedule(t), "schedule(t)", nonnegative=True)
        return sigma

    @torch.no_grad()
    def step(self) -> Union[float, torch.Tensor]:
        """Add N(0, sigma_t^2) to every ``p.grad`` that is not None, then t += 1. Returns sigma_t: a
        float, or inside a torch.compile'd step (or a CUDA-graph capture) a 0-d float64 tensor.

        Traceable: there t lives in a device tensor and sigma_t is computed from it on the device
        (the same formula in float64, the schedule by ``MagnitudeSchedule.at``), so a compiled step
        neither recompiles nor synchronises as t changes; eagerly sigma_t is host arithmetic, as
        before. A compiled step draws its seed even when sigma_t is 0 (deciding would read the
        device), where an eager step draws none."""
        self._settle_ranks()
        source = self._seed_source()
        by_device: "OrderedDict[torch.device, List[torch.Tensor]]" = OrderedDict()
        for p in self.params:
            if p.grad is not None:
                by_device.setdefault(p.grad.device, []).append(p.grad)
        if self._counter.on_device():
            t = self._counter.tensor.to(torch.float64)
            sigma = torch.sqrt(self.eta / (1.0 + t) ** self.gamma)
            if self.schedule is not None:
                sigma = sigma * schedule_at(self.schedule, self._counter.tensor)
            if self.eta > 0:
                for device, grads in by_device.items():
                    foreach_gaussian_noise_(grads, sigma.to(device), generator=source)
        else:
            if by_device and next(iter(by_device)) != self._counter.device:
                self._counter.to(next(iter(by_device)))  # the model moved after this was built
            sigma = self.std()
            if sigma > 0:
                for grads in by_device.values():
                    foreach_gaussian_noise_(grads, sigma, generator=source)
        self._counter.advance()
        return sigma

    def state_dict(self) -> Dict[str, Any]:
        """{"t", "eta", "gamma", "generator"} (and "schedule" with a stateful schedule): "generator" is
        the generator's state (``torch.Generator.get_state()``, a uint8 CPU tensor) when one was given
        (or the private generator of the seed the ranks agreed, ``distributed="agree"``), else None,
        so a resumed run draws the noise the uninterrupted run would have drawn; "schedule" is the
        schedule's ``state_dict()`` (``noisefast.schedules.adaptive``)."""
        source = self._seed_source()
        state = {"t": self.t, "eta": self.eta, "gamma": self.gamma,
                 "generator": source.get_state() if source is not None else None}
        if is_stateful(self.schedule):
            state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore t, eta, gamma, the generator's state and a stateful schedule's state; everything is
        validated before anything changes. A state without "generator" (saved before it was kept)
        leaves the generator as it is; one without "schedule", the schedule."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        keys, required = set(state_dict), {"t", "eta", "gamma"}
        allowed = required | {"generator"} | ({"schedule"} if is_stateful(self.schedule) else set())
        if not required <= keys <= allowed:
            raise ValueError(f"state_dict must have the keys 't', 'eta', 'gamma' (and 'generator'; 'schedule' with a "
                             f"stateful schedule); missing {sorted(required - keys)}, unexpected {sorted(keys - allowed)}")
        t = check_int(state_dict["t"], "state_dict['t']", 0)
        eta = check_real(state_dict["eta"], "state_dict['eta']", nonnegative=True)
        gamma = check_real(state_dict["gamma"], "state_dict['gamma']", nonnegative=True)
        generator_state = state_dict.get("generator")
        source = self._seed_source()
        if generator_state is not None:
            if source is None:
                raise ValueError("state_dict['generator'] holds a generator state, but this GradientNoise has no "
                                 "generator: build it with generator= to resume the same noise")
            check_generator_state(generator_state, source, "state_dict['generator']")
        schedule_state = state_dict.get("schedule")
        if schedule_state is not None:
            self.schedule.load_state_dict(schedule_state)  # checked before anything changes
        self.t, self.eta, self.gamma = t, eta, gamma
        if generator_state is not None:
            source.set_state(generator_state)

    def __repr__(self) -> str:
        schedule = "" if self.schedule is None else f", schedule={self.schedule!r}"
        return (f"GradientNoise({len(self.params)} tensors, eta={self.eta}, gamma={self.gamma}, t={self.t}{schedule}, "
                f"std={self.std():.4g})")
