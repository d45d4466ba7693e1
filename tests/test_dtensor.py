"""noisefast's ops on DTensors, on 2 and 4 spawned gloo processes (tests/distributed.py): each rank
works on its shard with no communication, outputs keep the input's placements, and every element
gets exactly the noise (and EMA value) it gets when the tensor is not sharded, under the same
seed (docs/design.md, "DTensors and the global index"). Uneven shards, Shard(0), Shard(1),
Replicate and a 2-D mesh; each op of item 1 of issue #15; the errors for Partial and for boxes the
kernels cannot map.

Every check of one world size runs in ONE spawned group (a process costs ~2 s): the ranks return
their local results with their boxes, and the parent compares each with the same call on the
whole tensor (the world-size-1 run), computed here with plain tensors.
"""
import warnings

import pytest
import torch

import noisefast
from distributed import run_distributed

pytestmark = pytest.mark.distributed

# (name, global shape, placements per mesh dimension); placements are "S<d>" or "R".
CASES_1D = [
    ("rows", (5, 7), ("S0",)),
    ("cols", (5, 7), ("S1",)),
    ("replicated", (5, 7), ("R",)),
    ("inner", (3, 6, 5), ("S1",)),
    ("last", (2, 3, 9), ("S2",)),
]
CASES_2D = [  # a 2 x 2 mesh
    ("batch_and_cols", (5, 7, 3), ("S0", "S1")),
    ("batch_twice", (9, 4), ("S0", "S0")),
    ("cols_and_replicated", (5, 7), ("S1", "R")),
]


def _placements(spec):
    from torch.distributed.tensor import Replicate, Shard
    return [Replicate() if p == "R" else Shard(int(p[1:])) for p in spec]


def _inputs(shape, salt=0):
    g = torch.Generator().manual_seed(100 + salt + sum(shape))
    return torch.randn(shape, generator=g)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _ops(x, kind):
    """The calls every case runs, as name -> function of (x: plain or DTensor) -> list of tensors.
    ``kind`` "any" for every placement, "batch" for per-sample ops (Shard(0) and Replicate)."""
    B = x.shape[0]
    sigma = torch.linspace(0.1, 1.0, B)
    ops = {
        "gaussian_noise": lambda t: [noisefast.gaussian_noise(t, 0.3, generator=_gen(1))],
        # a per-dimension-1 std: each rank takes the piece its shard uses
        "gaussian_noise_std": lambda t: [noisefast.gaussian_noise(
            t, torch.linspace(0.2, 0.9, t.shape[1]).view(t.shape[1], *([1] * (t.dim() - 2))), generator=_gen(2))],
        "foreach_out": lambda t: noisefast.foreach_gaussian_noise([t, t * 2], [0.5, 0.25], generator=_gen(3)),
        "foreach_tensor_std": lambda t: noisefast.foreach_gaussian_noise([t], torch.tensor(0.4), generator=_gen(4)),
    }
    if kind == "batch":
        ops["consistency_pair"] = lambda t: list(noisefast.consistency_pair(t, sigma, 0.7, generator=_gen(5)))
        ops["add_noise"] = lambda t: list(noisefast.add_noise(t, sigma, alpha=sigma.flip(0), input_perturbation=0.1,
                                                             generator=_gen(6)))
    return ops


def _in_place_and_ema(tensors, others, wrap):
    """foreach_gaussian_noise_ / add_noise_ on a list, ema_update_, ema_update_multi_ and
    GaussianNoise (default generator), on tensors made by ``wrap`` (identity, or distribute)."""
    results = {}
    ts = [wrap(t.clone(), k) for k, t in enumerate(tensors)]
    noisefast.foreach_gaussian_noise_(ts, [0.5, 0.0, 2.0], generator=_gen(7))
    results["foreach_in_place"] = ts
    ts = [wrap(t.clone(), k) for k, t in enumerate(tensors)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        noisefast.add_noise_(ts, 0.1, generator=_gen(8))
    results["add_noise_"] = ts
    shadows = [wrap(o.clone(), k) for k, o in enumerate(others)]
    weights = [wrap(t.clone(), k) for k, t in enumerate(tensors)]
    noisefast.ema_update_(shadows, weights, 0.9)
    results["ema_update_"] = shadows
    fast = [wrap(o.clone(), k) for k, o in enumerate(others)]
    slow = [wrap(o.clone() * 3, k) for k, o in enumerate(others)]
    noisefast.ema_update_multi_([fast, slow], weights, [0.5, 0.99])
    results["ema_update_multi_"] = fast + slow
    torch.manual_seed(1234)  # the module draws from the default generator: every rank seeds alike
    layer = noisefast.GaussianNoise(0.2)
    results["GaussianNoise"] = [layer(w) for w in weights]
    return results


LIST_SHAPES = [(5, 7), (3, 6, 5), (9,)]


def _check_rank(rank, world_size, mesh_shape, cases):
    """Run every op on this rank's shards; return [(case, op, k, local, box_offset, box_shape)]."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial, Shard, distribute_tensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    mesh = init_device_mesh("cpu", mesh_shape)
    out = []

    def record(case, op, results, likes):
        for k, (r, like) in enumerate(zip(results, likes)):
            assert isinstance(r, DTensor), (case, op, type(r))
            assert r.placements == like.placements and r.shape == like.shape, (case, op, r.placements)
            shape, offset = compute_local_shape_and_global_offset(r.shape, mesh, r.placements)
            out.append((case, op, k, r.to_local().clone(), tuple(offset), tuple(shape)))

    for name, shape, spec in cases:
        placements = _placements(spec)
        x = distribute_tensor(_inputs(shape), mesh, placements)
        kind = "batch" if all(p == "R" or p == "S0" for p in spec) else "any"
        for op, fn in _ops(_inputs(shape), kind).items():
            results = fn(x)
            record(name, op, results, [x] * len(results))
        # in place and EMA: a list of tensors of other shapes, laid out with this case's placements
        # where they fit (dimension d exists), else replicated
        lists = [_inputs(s, salt=1) for s in LIST_SHAPES]
        others = [_inputs(s, salt=2) for s in LIST_SHAPES]

        def wrap(t, k):
            fits = all(p == "R" or int(p[1:]) < t.dim() for p in spec)
            return distribute_tensor(t, mesh, placements if fits else _placements(["R"] * len(spec)))

        for op, results in _in_place_and_ema(lists, others, wrap).items():
            # in place: the tensors themselves; GaussianNoise: the weights it was given
            likes = [wrap(t, k) for k, t in enumerate(lists)] if op == "GaussianNoise" else results
            record(name, op, results, likes)
        # a gradient flows to the DTensor input, with its placements
        leaf = distribute_tensor(_inputs(shape), mesh, placements).requires_grad_()
        noisefast.gaussian_noise(leaf, 0.3, generator=_gen(1)).sum().backward()
        assert leaf.grad.placements == leaf.placements and bool((leaf.grad.to_local() == 1).all()), name

    # bad input raises on every rank before anything is written
    partial = DTensor.from_local(torch.ones(4, 3), mesh, [Partial()] * len(mesh_shape), run_check=False)
    errors = {}
    for op, fn in {"gaussian_noise": lambda: noisefast.gaussian_noise(partial, 0.1),
                   "foreach_": lambda: noisefast.foreach_gaussian_noise_([partial], 0.1),
                   "ema_update_": lambda: noisefast.ema_update_([partial], [partial], 0.5),
                   "consistency_pair": lambda: noisefast.consistency_pair(partial, 0.1, 0.2)}.items():
        before = partial.to_local().clone()
        with pytest.raises(ValueError, match="Partial") as info:
            fn()
        assert torch.equal(partial.to_local(), before), op
        errors[op] = str(info.value)
    cols = distribute_tensor(_inputs((4, 6)), mesh, [Shard(1)] * len(mesh_shape))
    with pytest.raises(NotImplementedError, match=r"Shard\(dim=1\)"):
        noisefast.consistency_pair(cols, 0.1, 0.2)
    rows = distribute_tensor(_inputs((4, 6)), mesh, [Shard(0)] * len(mesh_shape))
    with pytest.raises(ValueError, match=r"ema_tensors\[0\]"):
        noisefast.ema_update_([distribute_tensor(torch.zeros(4, 6), mesh, [Shard(1)] * len(mesh_shape))], [rows], 0.5)
    with pytest.raises(NotImplementedError, match="offset_noise"):
        noisefast.add_noise(distribute_tensor(_inputs((4, 2, 3)), mesh, [Shard(0)] * len(mesh_shape)), 0.5,
                            offset_noise=0.1)
    levels = noisefast.ConsistencyNoise(total_steps=100)
    with pytest.raises(NotImplementedError, match="consistency_pair"):
        levels.sample(rows, 0)
    with pytest.raises(NotImplementedError, match="consistency_pair"):
        noisefast.sampled_consistency_pair(rows, torch.tensor([0.1, 0.5, 1.0]), torch.tensor([0.5, 1.0]))
    if len(mesh_shape) == 2:  # Shard(1) and Shard(2) of [3, 6, 5]: not evenly spaced runs
        bad = distribute_tensor(_inputs((3, 6, 5)), mesh, [Shard(1), Shard(2)])
        with pytest.raises(NotImplementedError, match=r"Shard\(dim=1\), Shard\(dim=2\)"):
            noisefast.gaussian_noise(bad, 0.1)
    return out, errors


def _expected(cases):
    """{(case, op, k): the whole tensor's result}: the same calls on plain tensors (one rank)."""
    expected = {}
    for name, shape, spec in cases:
        kind = "batch" if all(p == "R" or p == "S0" for p in spec) else "any"
        for op, fn in _ops(_inputs(shape), kind).items():
            for k, r in enumerate(fn(_inputs(shape))):
                expected[(name, op, k)] = r
        lists = [_inputs(s, salt=1) for s in LIST_SHAPES]
        others = [_inputs(s, salt=2) for s in LIST_SHAPES]
        for op, results in _in_place_and_ema(lists, others, lambda t, k: t).items():
            for k, r in enumerate(results):
                expected[(name, op, k)] = r
    return expected


def _compare(results, cases, world_size):
    expected = _expected(cases)
    seen = set()
    for rank_out, errors in results:
        assert all("Partial" in e for e in errors.values()), errors
        for case, op, k, local, offset, shape in rank_out:
            whole = expected[(case, op, k)]
            box = tuple(slice(o, o + s) for o, s in zip(offset, shape))
            assert torch.equal(local, whole[box].detach()), (world_size, case, op, k, offset, shape)
            seen.add((case, op, k))
    assert seen == set(expected), set(expected) - seen


def test_dtensor_ops_on_two_ranks_get_the_unsharded_results():
    cases = CASES_1D
    _compare(run_distributed(2, _check_rank, (2,), cases), cases, 2)


def test_dtensor_ops_on_four_ranks_and_a_2d_mesh_get_the_unsharded_results():
    cases = CASES_1D + CASES_2D
    # one group: the 1-D mesh of 4 ranks for the 1-D cases, then the 2 x 2 mesh
    results = run_distributed(4, _four_ranks, cases)
    _compare([r[0] for r in results], CASES_1D, 4)
    _compare([r[1] for r in results], CASES_2D, 4)


def _four_ranks(rank, world_size, cases):
    return (_check_rank(rank, world_size, (4,), CASES_1D), _check_rank(rank, world_size, (2, 2), CASES_2D))
