"""noisefast in a small training loop: every op once per step, then a table of what ran where.

    python examples/quickstart.py [--steps 200] [--device cpu|cuda]

A noisy-input regression network: GaussianNoise regularises the hidden layer, gaussian_noise
perturbs the inputs, and the loss is printed as training goes. The table at the end names the
backend each op used and its time per call on this machine.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import noisefast


def make_data(n: int, generator: torch.Generator):
    x = torch.rand(n, 8, generator=generator) * 4 - 2
    y = torch.sin(x[:, :4]).sum(dim=1, keepdim=True) + 0.5 * x[:, 4:5] * x[:, 5:6]
    return x, y


def time_per_call(fn, repeats: int = 20) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
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

    x_train, y_train = make_data(4096, torch.Generator().manual_seed(0))
    x_test, y_test = make_data(1024, torch.Generator().manual_seed(1))
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))

    model = nn.Sequential(nn.Linear(8, 128), nn.SiLU(), noisefast.GaussianNoise(0.1),
                          nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1)).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    print(f"noisefast {noisefast.__version__} on {device}; backends: {noisefast.backends()}")
    for step in range(1, args.steps + 1):
        index = torch.randint(0, x_train.shape[0], (256,), device=device)
        x = noisefast.gaussian_noise(x_train[index], 0.05)   # input noise
        loss = nn.functional.mse_loss(model(x), y_train[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % max(1, args.steps // 5) == 0 or step == 1:
            model.eval()
            with torch.no_grad():
                test = nn.functional.mse_loss(model(x_test), y_test).item()
            model.train()
            print(f"step {step:5d}  train loss {loss.item():.4f}  test loss {test:.4f}")

    big = torch.randn(1 << 20, device=device)
    ops = [
        ("noisefast.randn", "gaussian_noise", lambda: noisefast.randn(1 << 20, seed=1, device=device)),
        ("noisefast.gaussian_noise", "gaussian_noise", lambda: noisefast.gaussian_noise(big, 0.1)),
        ("noisefast.GaussianNoise", "gaussian_noise", lambda: model[2](big)),
    ]
    kernels = noisefast.ops.gaussian_noise.KERNELS
    print(f"\n{'op (1M elements)':28s} {'backend':10s} {'time per call':>14s}")
    for name, _, fn in ops:
        print(f"{name:28s} {kernels.backend_for(device):10s} {time_per_call(fn) * 1e3:11.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
