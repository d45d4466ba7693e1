"""Scale-out on torch.distributed with gloo on the CPU (issue #15, items 3 and 4): the sharded EMA and
PostHocEMA under FSDP2 (``fully_shard``), checkpoints through ``torch.distributed.checkpoint`` on
another world size, and GradientNoise and EMA naming under DDP.

One spawned group of two processes runs every multi-process check (a spawn costs ~2 s a process);
the single-process references run in the test process itself, without a process group.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import io
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from distributed import run_distributed
from noisefast import EMA, GradientNoise, PostHocEMA

pytestmark = pytest.mark.distributed

STEPS, SAVE_AT, DECAY, SIGMA_REL = 6, 3, 0.8, 0.07


class Net(nn.Module):
    """Shapes that shard unevenly on 2 ranks ([5, 6] -> 3 + 2 rows, [3] -> 2 + 1) and one whose
    second rank gets an empty shard ([1, 3]), and a buffer that changes each step."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)
        self.gain = nn.Parameter(torch.ones(1, 3))
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x):
        return self.out(torch.tanh(self.inp(x))) * self.gain * self.scale


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def train(model, averagers, start: int, stop: int, rank: int = 0, world: int = 1) -> None:
    """Steps start..stop-1 of the same run on any world size: each rank takes its rows of the
    full batch; FSDP2 and DDP average the gradients, so every world size takes the full-batch step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # stateless: nothing to checkpoint
    for step in range(start, stop):
        x, y = (t.chunk(world)[rank] for t in batch(step))
        loss = F.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.scale.add_(0.01)
        for averager in averagers:
            averager.update()


def packed(fn):
    """``fn`` returning its value as torch.save bytes: tensors put on the helper's queue travel
    through shared memory that the sending process must outlive, which a rank that returns and
    exits does not."""
    @functools.wraps(fn)
    def wrapper(rank, world, *args):
        buffer = io.BytesIO()
        torch.save(fn(rank, world, *args), buffer)
        return buffer.getvalue()
    return wrapper


def unpacked(results):
    return [torch.load(io.BytesIO(r), weights_only=True) for r in results]


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _fsdp_checks(rank: int, world: int, directory: str) -> dict:
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Partial, Replicate

    model = make_net()
    fully_shard(model.inp)
    fully_shard(model)
    ema = EMA(model, decay=DECAY)
    phema = PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=2,
                       directory=os.path.join(directory, "phema"))
    in_memory = PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=2)
    out = {}

    # Shards: fp32 shadows of the local shards, one per parameter; buffers are copied whole.
    assert ema.sharded and ema.names == [n for n, _ in model.named_parameters()] + ["scale"]
    shapes = {n: tuple(s.shape) for n, s in ema.averaged().items()}
    assert shapes == {n: tuple(p.to_local().shape) for n, p in model.named_parameters()} | {"scale": (3,)}
    assert shapes["gain"] == ((1, 3) if rank == 0 else (0, 3))

    train(model, [ema, phema, in_memory], 0, SAVE_AT, rank, world)
    state = ema.state_dict()
    for name, p in model.named_parameters():
        value = state["averaged"][0][name]
        assert isinstance(value, DTensor) and value.placements == p.placements and value.shape == p.shape
        assert value.device_mesh == p.device_mesh and value.to_local().data_ptr() == ema.averaged()[name].data_ptr()
    assert type(state["copied"]["scale"]) is torch.Tensor
    dcp.save({"model": model.state_dict(), "ema": state}, checkpoint_id=os.path.join(directory, "dcp"))
    out["at_save"] = ema.full_averaged()

    # A state that does not fit changes nothing: a plain tensor where a DTensor belongs, a DTensor
    # of another placement.
    before = {n: t.clone() for n, t in ema.averaged().items()}
    bad = copy.copy(state)
    bad["averaged"] = [dict(state["averaged"][0], **{"inp.weight": _full(state["averaged"][0]["inp.weight"])})]
    with pytest.raises(TypeError, match=r"\['inp.weight'\] must be a DTensor"):
        ema.load_state_dict(bad)
    replicated = state["averaged"][0]["out.bias"].redistribute(placements=[Replicate()])
    bad["averaged"] = [dict(state["averaged"][0], **{"out.bias": replicated})]
    with pytest.raises(ValueError, match=r"\['out.bias'\] is laid out as \(Replicate\(\),\)"):
        ema.load_state_dict(bad)
    assert all(torch.equal(before[n], t) for n, t in ema.averaged().items())

    train(model, [ema, phema, in_memory], SAVE_AT, STEPS, rank, world)
    out["final"] = ema.full_averaged()
    out["step"], out["num_updates"] = ema.step, ema.num_updates
    out["params"] = {n: p.full_tensor() for n, p in model.named_parameters()}

    # copy_to / store / restore / average_parameters on the sharded model; a forward pass (FSDP2
    # gathers the shards) sees the averaged weights.
    x = batch(99)[0]
    with torch.no_grad():
        trained = model(x)
        with ema.average_parameters(model):
            assert all(torch.equal(p.full_tensor(), out["final"][n]) for n, p in model.named_parameters())
            averaged_out = model(x)
        assert torch.equal(model(x), trained)
    reference = make_net()
    reference.load_state_dict(out["final"])
    torch.testing.assert_close(averaged_out, reference(x), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="full_averaged"):
        ema.copy_to(make_net())  # an unsharded model takes the gathered weights

    # PostHocEMA: per-rank snapshot files, shard-local reconstruction, gathered on request.
    assert phema.snapshot_times == [2, 4, 6]
    assert sorted(os.listdir(os.path.join(directory, "phema"))) == sorted(
        f"phema-{t:010d}.rank{r}-of-{world}.pt" for t in (2, 4, 6) for r in range(world))
    out["phema"] = phema.reconstruct(SIGMA_REL, full=True)
    local = phema.reconstruct(SIGMA_REL)
    assert all(torch.equal(local[n], in_memory.reconstruct(SIGMA_REL)[n]) for n in local)
    ema.store(model)
    phema.copy_to(model, SIGMA_REL)
    assert all(torch.equal(p.full_tensor(), out["phema"][n]) for n, p in model.named_parameters())
    ema.restore(model)
    snapshots = in_memory.state_dict()["snapshots"]
    assert isinstance(snapshots[0]["data"]["averaged"][0]["inp.weight"], DTensor)
    resumed = PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=2)
    resumed.load_state_dict(in_memory.state_dict())
    assert all(torch.equal(resumed.reconstruct(SIGMA_REL)[n], local[n]) for n in local)

    # Placements the EMA cannot serve, and shadows away from the mesh's device, are refused by name.
    pending = DTensor.from_local(torch.ones(2), model.inp.weight.device_mesh, [Partial()])
    with pytest.raises(ValueError, match=r"0 is a DTensor with placement Partial"):
        EMA([pending])
    with pytest.raises(ValueError, match=r"device=meta cannot hold the shadow of gain"):
        EMA(model, device="meta")

    # A bfloat16 sharded model keeps float32 shadow shards.
    model16 = make_net().to(torch.bfloat16)
    fully_shard(model16)
    ema16 = EMA(model16, decay=DECAY)
    assert all(s.dtype == torch.float32 for n, s in ema16.averaged().items() if n != "scale")
    with torch.no_grad():
        for p in model16.parameters():
            p.to_local().add_(0.5)
    ema16.update()
    for n, p in model16.named_parameters():
        assert torch.equal(ema16.full_averaged()[n], p.full_tensor().float())
    out["rank"] = dist.get_rank()
    return out


def _ddp_checks(rank: int, world: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    # Names: EMA(ddp) and EMA(torch.compile(ddp)) track the inner model's names.
    net = make_net()
    ddp = DDP(net)
    for wrapped in (ddp, torch.compile(ddp)):
        ema = EMA(wrapped, decay=DECAY)
        assert ema.names == EMA(net).names and not any(n.startswith(("module.", "_orig_mod.")) for n in ema.names)
        assert set(ema.state_dict()["averaged"][0]) == {n for n, _ in net.named_parameters()}
        with torch.no_grad():
            net.out.bias.add_(1.0)
        ema.copy_to(wrapped)
        assert torch.equal(net.out.bias, ema.averaged()["out.bias"])

    # GradientNoise replicas: the ranks' default generators differ on purpose.
    def replicas_after_noise(**kwargs):
        model = DDP(make_net())
        torch.manual_seed(100 + rank)
        noise = GradientNoise(model.parameters(), eta=0.5, **kwargs)
        train_with_noise(model, noise, rank, world)
        return torch.cat([p.detach().flatten() for p in model.parameters()]), noise

    out["agree"], agreed = replicas_after_noise()
    out["agree_state"] = agreed.state_dict()["generator"]
    resumed = GradientNoise(make_net().parameters(), eta=0.5)  # agrees on a new seed, then loads the old
    resumed.load_state_dict(agreed.state_dict())
    assert torch.equal(resumed.state_dict()["generator"], out["agree_state"])
    out["local"], _ = replicas_after_noise(distributed="local")
    generator = torch.Generator().manual_seed(7 + rank)
    out["agree_generator"], _ = replicas_after_noise(generator=generator)
    params = list(make_net().parameters())
    torch.manual_seed(100 + rank)
    with pytest.raises(RuntimeError, match=r"default cpu generator of ranks \[1\] differs"):
        GradientNoise(params, distributed="check")
    same = torch.Generator().manual_seed(5)
    GradientNoise(make_net().parameters(), generator=same, distributed="check")  # identical: no error
    return out


def train_with_noise(model, noise, rank, world, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        x, y = (t.chunk(world)[rank] for t in batch(step))
        optimizer.zero_grad()
        F.mse_loss(model(x), y).backward()
        noise.step()
        optimizer.step()


def _sharded_gradient_noise(rank: int, world: int) -> dict:
    """GradientNoise on FSDP2's DTensor gradients: the gathered noise is the noise the unsharded
    gradients get from the agreed seed (global-index noise; needs DTensor support in the ops)."""
    from torch.distributed.fsdp import fully_shard

    model = make_net()
    fully_shard(model)
    torch.manual_seed(100 + rank)
    noise = GradientNoise(model.parameters(), eta=0.5)
    agreed = noise.state_dict()["generator"]
    x, y = (t.chunk(world)[rank] for t in batch(0))
    F.mse_loss(model(x), y).backward()
    before = {n: p.grad.full_tensor() for n, p in model.named_parameters()}
    noise.step()
    return {"noise": {n: p.grad.full_tensor() - before[n] for n, p in model.named_parameters()},
            "generator_state": agreed, "std": noise.std(0)}


SHARDED_OPS = importlib.util.find_spec("noisefast._dtensor") is not None  # issue #15 items 1-2


@packed
def all_checks(rank: int, world: int, directory: str) -> dict:
    """Every multi-process check, in one spawned group (each spawn costs seconds)."""
    return {"fsdp": _fsdp_checks(rank, world, directory), "ddp": _ddp_checks(rank, world),
            "sharded_noise": _sharded_gradient_noise(rank, world) if SHARDED_OPS else None}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The results of :func:`all_checks` on 2 ranks, and the directory of their checkpoints."""
    directory = tmp_path_factory.mktemp("two-ranks")
    return unpacked(run_distributed(2, all_checks, str(directory))), directory


def test_fsdp2_ema_matches_one_process_and_checkpoints_across_world_sizes(two_ranks):
    import torch.distributed.checkpoint as dcp

    both, tmp_path = two_ranks
    results = [r["fsdp"] for r in both]
    for r in results[1:]:
        for key in ("final", "at_save", "phema", "params"):
            assert all(torch.equal(r[key][n], results[0][key][n]) for n in r[key])
    sharded = results[0]

    # The same run on one process, unsharded: the same weights and averages to fp32 tolerance.
    model = make_net()
    ema = EMA(model, decay=DECAY)
    phema = PostHocEMA(model, sigma_rels=(0.05, 0.10), snapshot_every=2)
    train(model, [ema, phema], 0, SAVE_AT)
    for n, t in ema.averaged().items():
        torch.testing.assert_close(sharded["at_save"][n], t, rtol=1e-5, atol=1e-6)
    train(model, [ema, phema], SAVE_AT, STEPS)
    assert (ema.step, ema.num_updates) == (sharded["step"], sharded["num_updates"]) == (STEPS, STEPS)
    for n, p in model.named_parameters():
        torch.testing.assert_close(sharded["params"][n], p.detach(), rtol=1e-5, atol=1e-6)
    for n, t in ema.averaged().items():
        torch.testing.assert_close(sharded["final"][n], t, rtol=1e-5, atol=1e-6)
    for n, t in phema.reconstruct(SIGMA_REL).items():
        torch.testing.assert_close(sharded["phema"][n], t, rtol=1e-5, atol=1e-6)

    # Saved on 2 ranks, loaded on 1 (no process group, unsharded model): the run resumes.
    model = make_net()
    ema = EMA(model, decay=DECAY)
    state = {"model": model.state_dict(), "ema": ema.state_dict()}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(tmp_path / "dcp"))
    ema.load_state_dict(state["ema"])
    assert (ema.step, ema.num_updates) == (SAVE_AT, SAVE_AT)
    assert all(torch.equal(t, sharded["at_save"][n]) for n, t in ema.averaged().items())
    train(model, [ema], SAVE_AT, STEPS)
    for n, t in ema.averaged().items():
        torch.testing.assert_close(t, sharded["final"][n], rtol=1e-5, atol=1e-6)


def test_ddp_gradient_noise_replicas_and_ema_names(two_ranks):
    zero, one = (r["ddp"] for r in two_ranks[0])
    # Agreed seeds (the default): the replicas stay identical, with or without generator=.
    assert torch.equal(zero["agree"], one["agree"]) and torch.equal(zero["agree_generator"], one["agree_generator"])
    assert torch.equal(zero["agree_state"], one["agree_state"])
    # Without agreement each rank adds its own noise after the all-reduce: the replicas drift apart.
    assert not torch.allclose(zero["local"], one["local"])
    # The noise did act: the agreed run differs from a run without noise.
    assert not torch.allclose(zero["agree"], zero["local"])


def test_gradient_noise_without_a_process_group_draws_as_before():
    net = make_net()
    with pytest.raises(ValueError, match="distributed must be one of"):
        GradientNoise(net.parameters(), distributed="broadcast")
    noise = GradientNoise(net.parameters(), eta=0.5, distributed="check")
    assert noise.state_dict()["generator"] is None  # no agreement: the default generator, as before
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    torch.manual_seed(3)
    noise.step()
    got = [p.grad.clone() for p in net.parameters()]
    torch.manual_seed(3)
    for p in net.parameters():
        p.grad.zero_()
    GradientNoise(net.parameters(), eta=0.5, distributed="local").step()
    assert all(torch.equal(a, p.grad) for a, p in zip(got, net.parameters()))


@pytest.mark.skipif(not SHARDED_OPS, reason="DTensor support in the ops (issue #15 items 1-2) is not in this tree")
def test_fsdp2_gradient_noise_is_the_unsharded_noise_of_the_agreed_seed(two_ranks):
    from noisefast import foreach_gaussian_noise_

    zero, one = (r["sharded_noise"] for r in two_ranks[0])
    assert torch.equal(zero["generator_state"], one["generator_state"])
    generator = torch.Generator().set_state(zero["generator_state"])
    expected = [torch.zeros_like(v) for v in zero["noise"].values()]
    foreach_gaussian_noise_(expected, zero["std"], generator=generator)
    for (n, got), want in zip(zero["noise"].items(), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=n)
        assert torch.equal(got, one["noise"][n])
