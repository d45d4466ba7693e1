"""noisefast in a small consistency-training loop: each op once, then a table of what ran where.

    python examples/quickstart.py [--steps 300] [--device cpu|cuda]

A miniature consistency-training loop on synthetic 16-dimensional data (a mixture of two
Gaussians): ConsistencyNoise draws the levels and both noisy inputs, consistency_output applies
the iCT parameterisation, pseudo_huber_loss is the loss, GaussianNoise regularises a hidden layer,
and EMA keeps the evaluation weights. The table at the end runs each op once on 1M elements and
names the backend it used and its time per call on this machine.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import noisefast
from noisefast.ops import consistency_output as op_output
from noisefast.ops import ema_update as op_ema
from noisefast.ops import gaussian_noise as op_noise
from noisefast.ops import perturbation as op_perturbation
from noisefast.ops import pseudo_huber as op_loss
from noisefast.ops import randn as op_randn

DIM = 16


class Denoiser(nn.Module):
    """F(c_in x, sigma) for the consistency function f = c_skip x + c_out F."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(DIM + 1, 128), nn.SiLU(), noisefast.GaussianNoise(0.02),
                                 nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, DIM))

    def forward(self, x, sigma):
        _, _, c_in = noisefast.consistency_scalings(sigma)
        h = torch.cat([c_in[:, None] * x, sigma.log()[:, None] / 4], dim=1)
        return noisefast.consistency_output(self.net(h), x, sigma)


def make_data(n: int, generator: torch.Generator) -> torch.Tensor:
    centres = torch.where(torch.rand(n, 1, generator=generator) < 0.5, -0.5, 0.5)
    return centres + 0.1 * torch.randn(n, DIM, generator=generator)


def time_per_call(fn, device, repeats: int = 10) -> float:
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error("--steps must be > 0")
    device = torch.device(args.device)
    torch.manual_seed(0)

    data = make_data(8192, torch.Generator().manual_seed(0)).to(device)
    model = Denoiser().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    ema = noisefast.EMA(model, decay=0.99)
    noise = noisefast.ConsistencyNoise(levels=noisefast.LogNormalLevels(), curriculum="ict", total_steps=args.steps)

    print(f"noisefast {noisefast.__version__} on {device}; backends: {noisefast.backends()}")
    for step in range(args.steps):
        x = data[torch.randint(0, data.shape[0], (256,), device=device)]
        batch = noise.sample(x, step)
        student = model(batch.x_next, batch.sigma_next)
        with torch.no_grad():
            target = model(batch.x_cur, batch.sigma)
        loss = noisefast.pseudo_huber_loss(student, target, weight=batch.weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            print(f"step {step:5d}  N {noise.curriculum.num_levels(step):5d}  loss {loss.item():.5f}")

    with ema.average_parameters(model), torch.no_grad():
        model.eval()
        z = noisefast.randn(2048, DIM, seed=7, device=device) * 80.0
        samples = model(z, torch.full((2048,), 80.0, device=device))
    left = (samples.mean(dim=1) < 0).float().mean().item()
    print(f"one-step samples from the EMA model: {left:.0%} in the left mode (data: 50%), "
          f"mean |x| {samples.abs().mean().item():.3f} (data: ~0.5)")

    n = 1 << 20
    x = torch.randn(n // DIM, DIM, device=device)
    sigma = torch.rand(n // DIM, device=device) + 0.1
    pred = x.clone().requires_grad_()
    shadows = [torch.zeros(n // 4, device=device) for _ in range(4)]
    weights = [torch.randn(n // 4, device=device) for _ in range(4)]

    def loss_fwd_bwd():
        noisefast.pseudo_huber_loss(pred, x).backward()

    rows = [
        ("randn", op_randn.KERNELS, lambda: noisefast.randn(n, seed=1, device=device)),
        ("gaussian_noise", op_noise.KERNELS, lambda: noisefast.gaussian_noise(x, 0.1)),
        ("consistency_pair", op_perturbation.PAIR_KERNELS, lambda: noisefast.consistency_pair(x, sigma, sigma + 0.1)),
        ("add_noise (IP + offset)", op_perturbation.ADD_NOISE_KERNELS,
         lambda: noisefast.add_noise(x, sigma, input_perturbation=0.1, offset_noise=0.1)),
        ("ConsistencyNoise.sample", op_perturbation.SAMPLED_PAIR_KERNELS, lambda: noise.sample(x, args.steps - 1)),
        ("pseudo_huber_loss fwd+bwd", op_loss.FORWARD, loss_fwd_bwd),
        ("consistency_output", op_output.FORWARD, lambda: noisefast.consistency_output(x, x, sigma)),
        ("ema_update_ (4 tensors)", op_ema.KERNELS, lambda: noisefast.ema_update_(shadows, weights, 0.999)),
    ]
    print(f"\n{'op, 1M elements':28s} {'backend':10s} {'time per call':>14s}")
    for name, kernels, fn in rows:
        print(f"{name:28s} {kernels.backend_for(device):10s} {time_per_call(fn, device) * 1e3:11.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
