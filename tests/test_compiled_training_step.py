"""The stateful helpers (EMA.update, GradientNoise.step, noise schedules) inside a torch.compile'd
training step: their counters change every step, which must not recompile the graph."""
import torch
import torch._dynamo

import noisefast
from noisefast import schedules as S


def test_training_step_with_every_stateful_helper_compiles_once():
    torch.manual_seed(0)
    layer = noisefast.GaussianNoise(0.1, schedule=S.linear(1.0, 0.0, 20))
    net = torch.nn.Sequential(layer, torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    model = noisefast.WeightNoise(net, 0.01, schedule=S.cosine(1.0, 0.0, 20))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    ema = noisefast.EMA(net, decay=0.99, warmup="ramp")
    grad_noise = noisefast.GradientNoise(net.parameters(), eta=0.01)
    x, y = torch.randn(16, 6), torch.randn(16, 1)

    @torch.compile
    def train_step(step):
        noisefast.set_noise_step(model, step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        grad_noise.step()
        optimizer.step()
        ema.update()
        return loss

    train_step(0)
    train_step(1)  # dynamo's one recompile that makes the int argument `step` dynamic
    with torch._dynamo.config.patch(error_on_recompile=True):
        losses = [float(train_step(step)) for step in range(2, 9)]
    assert ema.step == 9 and grad_noise.t == 9 and layer.num_steps == 8
    assert all(torch.isfinite(torch.tensor(losses)))


def test_import_does_not_load_dynamo():
    """torch._dynamo costs ~1.5 s to import; noisefast defers it to the first compiled call."""
    import subprocess
    import sys

    code = "import sys, torch, noisefast; sys.exit('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
