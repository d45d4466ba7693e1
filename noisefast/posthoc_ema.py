"""Post-hoc EMA (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", section 3 and appendix C; NVlabs/edm2 training/phema.py and reconstruct_phema.py).

During training, two (or more) power-function EMA profiles are tracked and snapshotted every k
updates. Afterwards, an EMA with ANY other sigma_rel (at the time of any snapshot) is built as a
linear combination of the stored snapshots, chosen by least squares so that the combination's
averaging profile over past training steps is closest (in L2) to the wanted one:

    profile of tracked sigma_rel s at time t:   p(tau) = (gamma+1) tau^gamma / t^(gamma+1), 0 < tau <= t
    inner products <p_a, p_b>:                  closed form (EDM2 eq. 151, Algorithm 3)
    coefficients x = argmin || sum_i x_i p_i - p_target ||,   normalised to sum 1.

With t counted in updates, the discrete power-function EMA (decay (1 - 1/t)^(gamma+1)) averages
the weights with exactly the profile above applied to the piecewise-constant trajectory (weight i
of step i is (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1) = the integral of p over (i-1, i]), so
the inner products are exact for what the EMA computes; the reconstruction error is only the
least-squares residual of the profiles, small when snapshots are dense.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Dict, List, Optional, Union

import numpy as np
import torch

from ._checks import check_int
from ._compile import eager_under_compile
from .ema import EMA, sigma_rel_to_gamma
from .sharded_state import as_dtensor, gathered, is_dtensor


def power_function_weights(t: int, sigma_rel: float) -> np.ndarray:
    """The weight each training step 1..t has in the power-function EMA at update t (float64,
    shape [t], sums to 1): (i^(gamma+1) - (i-1)^(gamma+1)) / t^(gamma+1)."""
    g1 = sigma_rel_to_gamma(sigma_rel) + 1.0
    i = np.arange(1, t + 1, dtype=np.float64)
    return (i / t) ** g1 - ((i - 1) / t) ** g1


def power_function_correlation(a_t, a_sigma_rel, b_t, b_sigma_rel) -> np.ndarray:
    """<p_a, p_b> of the continuous profiles (EDM2 eq. 151), broadcast over the arguments."""
    a_t, b_t = np.float64(a_t), np.float64(b_t)
    a_gamma = np.vectorize(sigma_rel_to_gamma)(a_sigma_rel)
    b_gamma = np.vectorize(sigma_rel_to_gamma)(b_sigma_rel)
    t_exp = np.where(a_t < b_t, b_gamma, -a_gamma)
    num = (a_gamma + 1) * (b_gamma + 1) * (a_t / b_t) ** t_exp
    den = (a_gamma + b_gamma + 1) * np.maximum(a_t, b_t)
    return num / den


def posthoc_coefficients(in_t: Sequence[float], in_sigma_rel: Sequence[float], out_t: Sequence[float],
                         out_sigma_rel: Sequence[float]) -> np.ndarray:
    """Coefficients [len(in), len(out)] that combine the snapshots (in_t[i], in_sigma_rel[i]) into
    each wanted profile (out_t[j], out_sigma_rel[j]) (EDM2 Algorithm 3: solve A x = b with
    A = <p_in, p_in>, b = <p_in, p_out>, then normalise each column to sum 1). Solved by least
    squares, which also copes with a singular A (e.g. a snapshot stored twice)."""
    col = lambda v: np.float64(v).reshape(-1, 1)  # noqa: E731
    row = lambda v: np.float64(v).reshape(1, -1)  # noqa: E731
    a = power_function_correlation(col(in_t), col(in_sigma_rel), row(in_t), row(in_sigma_rel))
    b = power_function_correlation(col(in_t), col(in_sigma_rel), row(out_t), row(out_sigma_rel))
    x = np.linalg.lstsq(a, b, rcond=None)[0]
    return x / x.sum(axis=0, keepdims=True)


class PostHocEMA:
    """Tracks power-function EMA profiles, snapshots them every ``snapshot_every`` updates, and
    reconstructs an EMA of any sigma_rel afterwards.

    Args:
        model_or_params: as for :class:`noisefast.EMA`.
        sigma_rels: the tracked profiles (EDM2: 0.05 and 0.10); one fused update per step for all.
        snapshot_every: snapshot when t = step - update_after_step reaches a multiple of this.
        directory: where snapshots are saved (``phema-<t>.pt`` files, torch.save); None keeps
            them in memory (on ``snapshot_device``).
        snapshot_device: where in-memory snapshots live (default "cpu").
        update_after_step, include_buffers, dtype, device: as for :class:`noisefast.EMA`.

    Memory: each snapshot holds len(sigma_rels) copies of the averaged weights (float32 by
    default); EDM2 snapshots every ~8M images and keeps them on disk.

    Sharded models (FSDP2: DTensor parameters): every rank snapshots its own shards (on disk, one
    file per rank, ``phema-<t>.rank<r>-of-<w>.pt``), :meth:`reconstruct` combines them shard by
    shard (the combination is elementwise) and :meth:`copy_to` writes them into the sharded
    model; ``reconstruct(..., full=True)`` gathers full tensors (a collective: every rank calls
    it). :meth:`state_dict` holds the shards of in-memory snapshots as DTensors, like the EMA's
    state, so ``torch.distributed.checkpoint`` saves them whole (it loads into the tensors of an
    existing state, i.e. into a PostHocEMA holding the same snapshot times). A run resumes from
    snapshots on disk (``directory=``), which each rank reads back from its own file: on the same
    world size.
    """

    def __init__(self, model_or_params, sigma_rels: Sequence[float] = (0.05, 0.10), *,
                 snapshot_every: int = 1000, directory: Union[None, str, os.PathLike] = None,
                 snapshot_device: Union[str, torch.device] = "cpu", update_after_step: int = 0,
                 include_buffers: bool = True, dtype: Optional[torch.dtype] = torch.float32,
                 device: Union[None, str, torch.device] = None):
        if check_int(snapshot_every, "snapshot_every", 0) == 0:
            raise ValueError("snapshot_every must be >= 1")
        self.ema = EMA(model_or_params, sigma_rels=sigma_rels, update_after_step=update_after_step,
                       include_buffers=include_buffers, dtype=dtype, device=device)
        self.snapshot_every = int(snapshot_every)
        self.directory = os.fspath(directory) if directory is not None else None
        if self.directory is not None:
            os.makedirs(self.directory, exist_ok=True)
        self.snapshot_device = torch.device(snapshot_device)
        # One record per snapshot: {"t": int, "path": str} on disk or {"t": int, "data": dict}.
        self._records: List[dict] = []

    @property
    def sigma_rels(self) -> List[float]:
        return list(self.ema.sigma_rels)

    @property
    def snapshot_times(self) -> List[int]:
        return [r["t"] for r in self._records]

    @eager_under_compile
    def update(self, step: Optional[int] = None) -> None:
        """:meth:`EMA.update`, then a snapshot when t crosses a multiple of snapshot_every (eager
        inside a torch.compile'd step, like EMA.update)."""
        before = self.ema.power_time()
        self.ema.update(step)
        t = self.ema.power_time()
        if t >= 1 and t // self.snapshot_every > max(before, 0) // self.snapshot_every:
            self.snapshot()

    def snapshot(self) -> None:
        """Store the profiles now (t = the EMA's power_time()); replaces a snapshot at the same t."""
        data = self.ema.snapshot(device=self.snapshot_device)
        self._records = [r for r in self._records if r["t"] != data["t"]]
        if self.directory is not None:
            path = os.path.join(self.directory, f"phema-{data['t']:010d}.pt")
            torch.save(data, self._file_of(path))
            self._records.append({"t": data["t"], "path": path})
        else:
            self._records.append({"t": data["t"], "data": data})
        self._records.sort(key=lambda r: r["t"])

    def _file_of(self, path: str) -> str:
        """The file that holds this rank's part of the snapshot recorded as ``path`` (the record
        is the same on every rank, so a checkpoint of it does not depend on the rank)."""
        if not self.ema.sharded:
            return path
        stem, ext = os.path.splitext(path)
        return f"{stem}.rank{torch.distributed.get_rank()}-of-{torch.distributed.get_world_size()}{ext}"

    def _load(self, record: dict) -> dict:
        if "data" in record:
            return record["data"]
        path = self._file_of(record["path"])
        data = torch.load(path, map_location=self.snapshot_device, weights_only=True)
        return self.check_snapshot(data, record["t"], f"snapshot file {path!r}")

    def check_snapshot(self, data, t: int, where: str) -> dict:
        """``data`` (a snapshot of time ``t``, as :meth:`EMA.snapshot` makes), upgraded from a
        version-1 layout if needed, or a TypeError/ValueError naming ``where``: the tracked
        profiles, names, shapes and tensor kinds of this PostHocEMA's EMA."""
        if not isinstance(data, Mapping):
            raise TypeError(f"{where} must be a dict, got {type(data).__name__}")
        for key in ("t", "sigma_rels", "averaged", "copied"):
            if key not in data:
                raise ValueError(f"{where} is missing {key!r}")
        if data["t"] != t:
            raise ValueError(f"{where} is the snapshot of t = {data['t']!r}, expected t = {t}")
        if not self.ema.same_sigma_rels(data["sigma_rels"]):
            raise ValueError(f"{where} has sigma_rels {data['sigma_rels']}, this PostHocEMA tracks {self.sigma_rels}")
        averaged, copied = self.ema.upgraded_tensors(data["averaged"], data["copied"])
        self.ema.check_tensors(averaged, copied, where, local=True)
        local = lambda d: {n: v.to_local() if is_dtensor(v) else v for n, v in d.items()}  # noqa: E731
        return {**data, "averaged": [local(a) for a in averaged], "copied": local(copied)}

    def _check_time(self, t) -> int:
        """``t`` as a snapshot time: None is the last one; any other t must be one."""
        if not self._records:
            raise ValueError("no snapshots yet: call update() (or snapshot()) first")
        if t is None:
            return self._records[-1]["t"]
        t = check_int(t, "t", 1)
        if t not in self.snapshot_times:
            raise ValueError(f"t = {t} is not a snapshot time; reconstructions are made at the snapshot times "
                             f"{self.snapshot_times}")
        return t

    def coefficients(self, sigma_rel: float, t: Optional[int] = None) -> Dict[int, np.ndarray]:
        """{snapshot t: coefficient per tracked profile} of the reconstruction of ``sigma_rel``
        at time ``t``, a snapshot time (default: the last one), from the snapshots at times <= t.
        Raises ValueError for a t that is not a snapshot time: the reconstruction is made at the
        time of a snapshot, whose copied tensors (buffers) it uses, as EDM2 does."""
        sigma_rel_to_gamma(sigma_rel)  # validates
        t_out = self._check_time(t)
        used = [r for r in self._records if r["t"] <= t_out]
        profiles = len(self.ema.sigma_rels)
        in_t = [r["t"] for r in used for _ in range(profiles)]
        in_sigma = [s for _ in used for s in self.ema.sigma_rels]
        x = posthoc_coefficients(in_t, in_sigma, [t_out], [sigma_rel])[:, 0]
        return {r["t"]: x[k * profiles:(k + 1) * profiles] for k, r in enumerate(used)}

    @torch.no_grad()
    def reconstruct(self, sigma_rel: float, *, t: Optional[int] = None, dtype: torch.dtype = torch.float32,
                    accumulate_dtype: torch.dtype = torch.float64, full: bool = False) -> Dict[str, torch.Tensor]:
        """{name: tensor} of the EMA with ``sigma_rel`` at time ``t`` (a snapshot time; default:
        the last snapshot): sum over snapshots and profiles of coefficient * snapshot, summed in
        ``accumulate_dtype`` (the coefficients alternate in sign and reach ~10^2, so float32
        sums lose digits), returned in ``dtype`` on ``snapshot_device``. Copied tensors (buffers,
        frozen parameters) come from the last snapshot used. Loads one snapshot at a time.

        Sharded weights come back as this rank's shards, or with ``full=True`` gathered into full
        tensors on every rank (a collective: every rank calls it)."""
        coefs = self.coefficients(sigma_rel, t)
        acc: Dict[str, torch.Tensor] = {}
        last = None
        for record in self._records:
            if record["t"] not in coefs:
                continue
            data = self._load(record)
            for p, c in enumerate(coefs[record["t"]]):
                for name, value in data["averaged"][p].items():
                    if name not in acc:
                        acc[name] = torch.zeros(value.shape, dtype=accumulate_dtype, device=value.device)
                    acc[name].add_(value.to(accumulate_dtype), alpha=float(c))
            last = data
        out = {name: v.to(dtype) for name, v in acc.items()}
        out.update({name: v.clone() for name, v in last["copied"].items()})
        if full:
            layouts = dict(zip(self.ema.names, self.ema.layouts))
            out = {name: v if layouts[name] is None else gathered(v, layouts[name]) for name, v in out.items()}
        return out

    @torch.no_grad()
    def copy_to(self, model, sigma_rel: float, *, t: Optional[int] = None) -> None:
        """Write the reconstruction of ``sigma_rel`` into ``model`` (an nn.Module, the tracked
        tensors' list, or None for the tracked tensors themselves; as :meth:`EMA.copy_to`)."""
        values = self.reconstruct(sigma_rel, t=t)
        for name, target in zip(self.ema.names, self.ema._targets(model)):
            target.copy_(values[name])

    def state_dict(self) -> dict:
        """The tracked EMA's state and the snapshot records (in-memory snapshots included;
        on-disk ones by path)."""
        return {"ema": self.ema.state_dict(), "snapshot_every": self.snapshot_every,
                "snapshots": [dict(r) if "data" not in r else {"t": r["t"], "data": self._as_global(r["data"])}
                              for r in self._records]}

    def _as_global(self, data: dict) -> dict:
        """A snapshot with its sharded local shards as DTensors (as the EMA's state holds them)."""
        if not self.ema.sharded:
            return data
        layouts = dict(zip(self.ema.names, self.ema.layouts))
        wrap = lambda d: {n: v if layouts[n] is None else as_dtensor(v, layouts[n]) for n, v in d.items()}  # noqa: E731
        return {**data, "averaged": [wrap(a) for a in data["averaged"]], "copied": wrap(data["copied"])}

    def load_state_dict(self, state: Mapping) -> None:
        """Load a :meth:`state_dict`; everything is checked first (the EMA's state; each snapshot
        record: a time t >= 1 given once, in-memory data with this EMA's profiles, names and
        shapes, or a file that exists), nothing changes on error."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state_dict must be a mapping, got {type(state).__name__}")
        for key in ("ema", "snapshot_every", "snapshots"):
            if key not in state:
                raise ValueError(f"state_dict is missing {key!r}")
        ema_state = self.ema.upgraded(state["ema"])
        self.ema.check_state(ema_state)
        every = check_int(state["snapshot_every"], "state_dict['snapshot_every']", 1)
        records = state["snapshots"]
        if isinstance(records, (str, bytes, Mapping)) or not isinstance(records, Sequence):
            raise TypeError("state_dict['snapshots'] must be a list")
        checked, seen = [], set()
        for k, r in enumerate(records):
            where = f"state_dict['snapshots'][{k}]"
            if not isinstance(r, Mapping) or "t" not in r or ("path" in r) == ("data" in r) or len(r) != 2:
                raise ValueError(f"{where} must be {{'t', 'path'}} or {{'t', 'data'}}")
            t = check_int(r["t"], f"{where}['t']", 1)
            if t in seen:
                raise ValueError(f"{where}: t = {t} is given twice (duplicate snapshots make the reconstruction "
                                 "singular)")
            seen.add(t)
            if "data" in r:
                checked.append({"t": t, "data": self.check_snapshot(r["data"], t, f"{where}['data']")})
            else:
                path = r["path"]
                if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(self._file_of(os.fspath(path))):
                    raise ValueError(f"{where}['path']: snapshot file {path!r} does not exist"
                                     + (f" (this rank's: {self._file_of(os.fspath(path))!r})" if self.ema.sharded
                                        and isinstance(path, (str, os.PathLike)) else ""))
                checked.append({"t": t, "path": os.fspath(path)})
        self.ema.load_state_dict(ema_state)
        self.snapshot_every = every
        self._records = sorted(checked, key=lambda r: r["t"])
