"""A consistency-training step under torch.compile(fullgraph=True) (issue #14): the forward region
(ConsistencyNoise over a curriculum whose N changes, consistency_scalings, consistency_output,
pseudo_huber_loss), the backward through compiled autograd, GradientNoise.step and EMA.update each a
fullgraph region, and the noise schedules' set_noise_step. Over the run: no graph break (fullgraph
would raise), at most one recompile per region after the first step (Dynamo making the int step
dynamic), and the losses and EMA weights of the eager run under the same seed."""
from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from torch import nn
from torch._dynamo import compiled_autograd

import noisefast
from noisefast import schedules as S

K = 40  # training steps; iCT's N doubles every 5 (8 values), the sinusoidal curriculum's takes 30
SIGMA_DATA = 0.5


class GraphCounter:
    """A torch.compile backend that counts the graphs it compiles, at each step of the run."""

    step = 0  # the training step now (set by the loops below)

    def __init__(self, backend: str):
        self.backend = backend
        self.graphs = 0
        self.new_at = []  # the steps at which graphs were compiled

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        self.new_at.append(GraphCounter.step)
        from torch._dynamo.backends.registry import lookup_backend
        return lookup_backend(self.backend)(gm, example_inputs)


class TinyConsistencyNet(nn.Module):
    """F(c_in x, sigma) by two convolutions with a sigma embedding; f = consistency_output(F, x, sigma)."""

    def __init__(self):
        super().__init__()
        self.conv_in = nn.Conv2d(3, 8, 3, padding=1)
        self.embed = nn.Linear(1, 8)
        self.conv_out = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x, sigma):
        _, _, c_in = noisefast.consistency_scalings(sigma, SIGMA_DATA)
        h = self.conv_in(x * c_in.view(-1, 1, 1, 1)) + self.embed(sigma.log().view(-1, 1) / 4).view(-1, 8, 1, 1)
        raw = self.conv_out(torch.nn.functional.silu(h))
        return noisefast.consistency_output(raw, x, sigma, sigma_data=SIGMA_DATA)


def _train(levels, curriculum, *, compile_with=None, device="cpu", tensor_step=False, compiled_backward=True):
    """(losses, EMA shadows) of K steps from seed 0. ``compile_with(region)``: the keyword
    arguments of torch.compile for a region ("forward", "backward", "grad_noise", "ema"), or None
    for the eager run. ``tensor_step``: the step as a 0-d tensor on the device (advanced in place)."""
    torch.manual_seed(0)
    net = TinyConsistencyNet().to(device)
    noise = noisefast.ConsistencyNoise(levels, curriculum=curriculum, total_steps=K, device=device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    ema = noisefast.EMA(net, decay=0.999, warmup="ramp")
    grad_noise = noisefast.GradientNoise(net.parameters(), eta=1e-4)
    data = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(1)).to(device)

    def forward(x, step):
        batch = noise.sample(x, step)
        student = net(batch.x_next, batch.sigma_next)
        with torch.no_grad():
            target = net(batch.x_cur, batch.sigma)
        return noisefast.pseudo_huber_loss(student, target, weight=batch.weight)

    grad_noise_step, ema_update, backward_compiler = grad_noise.step, ema.update, None
    if compile_with is not None:
        forward = torch.compile(forward, fullgraph=True, **compile_with("forward"))
        grad_noise_step = torch.compile(grad_noise.step, fullgraph=True, **compile_with("grad_noise"))
        ema_update = torch.compile(ema.update, fullgraph=True, **compile_with("ema"))
        if compiled_backward:
            backward_compiler = torch.compile(fullgraph=True, **compile_with("backward"))
    step = torch.zeros((), dtype=torch.int64, device=device) if tensor_step else 0
    GraphCounter.step = 0
    losses = []
    for k in range(K):
        optimizer.zero_grad(set_to_none=True)
        with compiled_autograd._enable(backward_compiler) if backward_compiler else contextlib.nullcontext():
            loss = forward(data, step)
            loss.backward()
        grad_noise_step()
        optimizer.step()  # eager: torch refuses Optimizer.step inside a fullgraph region
        ema_update()
        losses.append(loss.detach().clone())
        GraphCounter.step = k + 1
        if tensor_step:
            step += 1
        else:
            step = k + 1
    assert ema.step == K and grad_noise.t == K
    return torch.stack(losses), [t.clone() for t in ema.averaged().values()]


def _counted(backend: str):
    counters = {}

    def compile_with(region):
        counters[region] = GraphCounter(backend)
        return {"backend": counters[region]}
    return counters, compile_with


def _check_run(levels, curriculum, backend):
    noise = noisefast.ConsistencyNoise(levels, curriculum=curriculum, total_steps=K)
    assert len({noise.num_levels(k) for k in range(K)}) >= 6
    eager_losses, eager_ema = _train(levels, curriculum)
    counters, compile_with = _counted(backend)
    with torch._inductor.config.patch(fallback_random=True):  # inductor draws the seeds as eager does
        losses, shadows = _train(levels, curriculum, compile_with=compile_with)
    assert set(counters) == {"forward", "backward", "grad_noise", "ema"}
    for name, counter in counters.items():
        assert counter.graphs >= 1, f"{name}: nothing was compiled"
        assert all(step <= 1 for step in counter.new_at), f"{name}: graphs compiled at steps {counter.new_at}"
        assert counter.new_at.count(1) <= 1, f"{name}: more than one recompile at step 1: {counter.new_at}"
    torch.testing.assert_close(losses, eager_losses, rtol=1e-5, atol=1e-6)
    for got, want in zip(shadows, eager_ema):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_ict_step_compiles_without_breaks_or_recompiles():
    torch._dynamo.reset()
    _check_run(S.LogNormalLevels(), "ict", "inductor")


def test_polynomial_sinusoidal_step_compiles_without_breaks_or_recompiles():
    torch._dynamo.reset()
    _check_run(S.PolynomialLevels(), "sinusoidal", "aot_eager")


def test_noise_schedules_step_inside_a_fullgraph_region():
    """set_noise_step and ScheduledNoise.step traced: the magnitude follows the step without recompiling."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = noisefast.GaussianNoise(0.1, schedule=S.linear(1.0, 0.0, 20))
    net = nn.Sequential(layer, nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 1))
    model = noisefast.WeightNoise(net, 0.01, schedule=S.cosine(1.0, 0.0, 20))
    gated = noisefast.GaussianNoise(0.2, schedule=S.interval(S.polynomial(1.0, 0.2, 20), every=3, duration=2))
    x = torch.randn(16, 6)
    counter = GraphCounter("aot_eager")

    def forward(step):
        noisefast.set_noise_step(model, step)
        gated.step()
        return model(gated(x)).square().mean()

    compiled = torch.compile(forward, backend=counter, fullgraph=True)
    for step in range(12):
        GraphCounter.step = step
        torch.manual_seed(step)
        got = compiled(step)
        assert layer.num_steps == step and gated.num_steps == step + 1
        assert float(layer.magnitude()) == pytest.approx(0.1 * S.linear(1.0, 0.0, 20)(step))
        assert float(gated.magnitude()) == pytest.approx(0.2 * gated.schedule(step + 1))
        gated.num_steps = step  # the eager call below advances it again
        torch.manual_seed(step)
        want = forward(step)
        torch.testing.assert_close(got, want)
    assert all(step <= 1 for step in counter.new_at), counter.new_at


@pytest.mark.cuda
def test_cuda_graphs_replay_the_step_without_host_syncs():
    """mode="reduce-overhead" (CUDA graphs) for every region over the iCT curriculum, the step a
    device tensor (an int would be re-recorded for each value), host synchronisations an error
    from the third step on: the losses and EMA weights of the eager run under the same seed."""
    torch._dynamo.reset()
    eager_losses, eager_ema = _train(S.LogNormalLevels(), "ict", device="cuda")

    def reduce_overhead(region):
        return {"mode": "reduce-overhead"}

    original_zero_grad = torch.optim.Adam.zero_grad
    steps_seen = []

    def zero_grad(self, *args, **kwargs):  # the sync debug mode goes on once the graphs are recorded
        steps_seen.append(None)
        if len(steps_seen) == 3:
            torch.cuda.set_sync_debug_mode("error")
        return original_zero_grad(self, *args, **kwargs)

    try:
        with torch._inductor.config.patch(fallback_random=True), \
                pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.optim.Adam, "zero_grad", zero_grad)
            losses, shadows = _train(S.LogNormalLevels(), "ict", compile_with=reduce_overhead, device="cuda",
                                     tensor_step=True, compiled_backward=False)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.testing.assert_close(losses, eager_losses, rtol=1e-3, atol=1e-4)
    for got, want in zip(shadows, eager_ema):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)


def test_import_does_not_load_dynamo():
    """torch._dynamo costs ~1.5 s to import; noisefast defers it to the first compiled call."""
    code = "import sys, torch, noisefast; sys.exit('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
