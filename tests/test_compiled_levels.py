"""Level tables with N as data (issue #14, parts 1-2): ConsistencyNoise.sample, every level sampler
and sampled_consistency_pair under ``torch.compile(fullgraph=True)`` over a curriculum whose N
changes, without recompiling; and the same values as eager calls on tables cut to N."""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounterWithBackend

from noisefast import schedules as S
from noisefast.consistency import ConsistencyNoise
from noisefast.ops.perturbation import sampled_consistency_pair

K = 40  # steps of the curricula below: iCT's N takes 8 values (11 -> 1281 levels), the sinusoidal 30

SAMPLERS = {
    "lognormal": S.LogNormalLevels(),
    "polynomial_stratified": S.PolynomialLevels(),
    "polynomial_iid": S.PolynomialLevels(stratified=False),
    "uniform": S.UniformLevels(),
}


def _distinct_levels(noise: ConsistencyNoise, steps) -> int:
    return len({noise.num_levels(k) for k in steps})


def _compiled(fn, counter):
    return torch.compile(fn, backend=counter, fullgraph=True)


@pytest.mark.parametrize("curriculum", ["ict", "sinusoidal"])
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sample_compiles_once_over_a_curriculum(sampler, curriculum):
    """A Python int step: one graph for step 0 and one dynamic graph from step 1 on (Dynamo's
    specialisation of a new int argument); a 0-d tensor step: one graph for the whole run. Both
    give the values of the eager call under the same seed."""
    noise = ConsistencyNoise(SAMPLERS[sampler], curriculum=curriculum, total_steps=K)
    assert _distinct_levels(noise, range(K + 1)) >= 6
    x = torch.randn(8, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    for as_tensor in (False, True):
        torch._dynamo.reset()
        counter = CompileCounterWithBackend("aot_eager")
        step_fn = _compiled(lambda x, step: noise.sample(x, step), counter)
        for k in range(K + 1):
            step = torch.tensor(k) if as_tensor else k
            torch.manual_seed(k)
            got = step_fn(x, step)
            torch.manual_seed(k)
            want = noise.sample(x, k)
            for name, a, b in zip(got._fields, got, want):
                assert torch.equal(a, b), f"step {k}: {name}"
            if k == 1:
                graphs_after_first_steps = counter.frame_count
        assert counter.frame_count == graphs_after_first_steps == (1 if as_tensor else 2), \
            f"{'tensor' if as_tensor else 'int'} step recompiled"


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_level_samplers_take_num_levels_as_data(sampler):
    """sample/probs/cdf on a table of fixed capacity with N a 0-d tensor: one graph for every N,
    and the same values as the eager call on the table cut to N (probabilities zero past N - 2)."""
    levels = SAMPLERS[sampler]
    capacity = 41
    table = S.karras_sigmas(capacity, dtype=torch.float64)

    def draw(table, n):
        return levels.sample(16, table, num_levels=n), levels.cdf(table, 16, num_levels=n)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = _compiled(draw, counter)
    for n in (2, 3, 11, 20, 41):
        padded = table.clone()
        padded[:n] = S.karras_sigmas(n, dtype=torch.float64)
        padded[n:] = padded[n - 1]
        torch.manual_seed(n)
        index, cdf = compiled(padded, torch.tensor(n))
        torch.manual_seed(n)
        eager_index, eager_cdf = draw(padded, n)
        assert torch.equal(index, eager_index) and torch.equal(cdf, eager_cdf)
        assert int(index.min()) >= 0 and int(index.max()) <= n - 2
        exact_probs = levels.probs(padded[:n], 16)
        torch.testing.assert_close(levels.probs(padded, 16, num_levels=n)[:n - 1], exact_probs, rtol=1e-12, atol=1e-15)
        assert torch.all(cdf[n - 2:] == 1.0)
        if levels.iid:  # i.i.d. samplers draw by inverse CDF: the cut table gives the same indices
            torch.manual_seed(n)
            exact = levels.sample(16, padded[:n])
            if sampler != "uniform":  # UniformLevels draws randint without num_levels
                assert torch.equal(index, exact)
    assert counter.frame_count == 1


def test_sampled_consistency_pair_takes_num_levels_as_data():
    counter = CompileCounterWithBackend("aot_eager")
    levels, capacity = S.LogNormalLevels(), 33
    x = torch.randn(6, 2, 3, generator=torch.Generator().manual_seed(1))

    def pair(x, sigmas, cdf, n):
        return sampled_consistency_pair(x, sigmas, cdf, num_levels=n)

    compiled = _compiled(pair, counter)
    for n in (2, 9, 17, 33):
        sigmas = S.karras_sigmas(capacity, dtype=torch.float64)
        sigmas[:n] = S.karras_sigmas(n, dtype=torch.float64)
        sigmas[n:] = sigmas[n - 1]
        cdf = levels.cdf(sigmas, num_levels=n)
        torch.manual_seed(n)
        got = compiled(x, sigmas, cdf, torch.tensor(n))
        torch.manual_seed(n)
        want = sampled_consistency_pair(x, sigmas[:n], levels.cdf(sigmas[:n]))
        for a, b in zip(got, want):
            assert torch.equal(a, b)
    assert counter.frame_count == 1


def test_tables_are_built_and_checked_once():
    """Every table of the run exists after construction; table(step) gives views of the rows cut to N."""
    noise = ConsistencyNoise(total_steps=K)
    tables = noise.tables("cpu")
    assert tables.sigmas.shape == (8, 1281) and tables.cdf.shape == (8, 1280)
    assert tables.num_levels.tolist() == [11, 21, 41, 81, 161, 321, 641, 1281]
    assert tables.starts.tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    for k in (0, 7, K, K + 100):
        sigmas, cdf = noise.table(k, "cpu")
        n = noise.num_levels(k)
        assert sigmas.numel() == n and cdf.numel() == n - 1 and cdf[-1] == 1.0
        assert torch.equal(sigmas, S.karras_sigmas(n, dtype=torch.float64))


def test_num_levels_errors():
    table = S.karras_sigmas(8, dtype=torch.float64)
    for bad, error in ((1, ValueError), (9, ValueError), (torch.tensor(9), ValueError),
                       (torch.tensor(1), ValueError), (torch.tensor(3.0), TypeError), (torch.tensor([3]), TypeError)):
        with pytest.raises(error, match="num_levels"):
            S.LogNormalLevels().cdf(table, num_levels=bad)
    noise = ConsistencyNoise(total_steps=K)
    with pytest.raises(ValueError, match="step"):
        noise.sample(torch.randn(4, 3), torch.tensor(-1))
    with pytest.raises(TypeError, match="step"):
        noise.sample(torch.randn(4, 3), torch.tensor(1.0))


def test_compiled_checks_fire_on_the_device():
    """Under torch.compile the value checks are device-side assertions (torch._assert_async): a
    broken table or a negative step fails at run time, with the check's message."""
    sigmas = S.karras_sigmas(11, dtype=torch.float64)
    cdf = S.LogNormalLevels().cdf(sigmas)
    x = torch.randn(4, 3)
    pair = torch.compile(lambda x, s, c: sampled_consistency_pair(x, s, c), backend="aot_eager", fullgraph=True)
    pair(x, sigmas, cdf)
    broken = cdf.clone()
    broken[3] = 2.0
    with pytest.raises(RuntimeError, match="cdf must be nondecreasing"):
        pair(x, sigmas, broken)
    noise = ConsistencyNoise(total_steps=K)
    sample = torch.compile(lambda x, step: noise.sample(x, step), backend="aot_eager", fullgraph=True)
    sample(x, torch.tensor(3))
    with pytest.raises(RuntimeError, match="step must be >= 0"):
        sample(x, torch.tensor(-1))
