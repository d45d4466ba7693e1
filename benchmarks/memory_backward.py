"""Peak CPU memory of the sigma gradient of consistency_pair and add_noise, against eager autograd.

    python -m benchmarks.memory_backward [--numel N] [--batch B]

For a tensor sigma that requires grad (x does not), measures the peak of the memory allocated
during ``torch.autograd.grad(outputs, sigma, grads)`` above what was allocated before it (the
running sum of torch.profiler's allocation and free events, in order). noisefast regenerates the
noise inside the reduction (noisefast::perturbation_noise_grad), so its backward allocates only
[B]-sized results; the eager lines (noisefast.reference.perturbation.*_eager) keep their noise
tensor alive in the graph (counted before the backward, not in the peak) and allocate full-size
products. Results: benchmarks/NOTES.md.
"""
from __future__ import annotations

import argparse

import torch

import noisefast
from noisefast.reference.perturbation import add_noise_eager, consistency_pair_eager


def backward_peak_bytes(fn) -> int:
    """Peak bytes allocated above the starting point while ``fn`` runs (CPU allocations)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    level = peak = 0
    for e in events:
        level += e.cpu_memory_usage
        peak = max(peak, level)
    return peak


def measure(op: str, provider: str, numel: int, batch: int) -> float:
    """MiB of the backward's peak for one op and provider."""
    x = torch.randn(batch, numel // batch)
    sigma = (torch.rand(batch) + 0.5).requires_grad_()
    grad = torch.randn_like(x)
    if op == "consistency_pair":
        sigma_next = sigma * 2
        outs = (noisefast.consistency_pair(x, sigma, sigma_next) if provider == "noisefast"
                else consistency_pair_eager(x, sigma, sigma_next))
        grads = (grad, grad)
    else:
        outs = (noisefast.add_noise(x, sigma, input_perturbation=0.1) if provider == "noisefast"
                else add_noise_eager(x, sigma, input_perturbation=0.1))[:1]
        grads = (grad,)
    peak = backward_peak_bytes(lambda: torch.autograd.grad(outs, sigma, grads))
    return peak / 2 ** 20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--numel", type=int, default=8 * 2 ** 20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(f"backward peak above start, CPU, {args.numel} float32 elements, sigma [{args.batch}] "
          f"(x itself: {args.numel * 4 / 2 ** 20:.0f} MiB)\n")
    print("| op | eager MiB | noisefast MiB |")
    print("|---|---|---|")
    for op in ("consistency_pair", "add_noise"):
        eager = measure(op, "eager", args.numel, args.batch)
        fused = measure(op, "noisefast", args.numel, args.batch)
        print(f"| {op} | {eager:.1f} | {fused:.3f} |", flush=True)


if __name__ == "__main__":
    main()
