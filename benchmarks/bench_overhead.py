"""Per-call cost on small tensors: noisefast against the eager lines each call replaces.

At 1 and 1000 elements the kernels take a microsecond or less; what is measured is everything
around them: argument checks, seed draws, dispatch, autograd. Users with many small tensors (a
GaussianNoise in every block, per-layer noise, EMA over many small parameters) pay it every step.
Goal (issue #13): noisefast within 2x of the eager lines on the CPU.

Cases (CASES below), each with the eager lines it replaces:

- gaussian_noise, float std:    x + std * torch.randn_like(x)
- gaussian_noise, tensor std:   the same with a 0-d tensor std (noisefast checks its value)
- GaussianNoise, scheduled:     x + std * schedule(step) * torch.randn_like(x)   (module, training mode)
- add_noise, sigma [B]:         noisefast.reference.perturbation.add_noise_eager
- consistency_pair, sigma [B]:  noisefast.reference.perturbation.consistency_pair_eager
- pseudo_huber_loss:            noisefast.reference.pseudo_huber.pseudo_huber_loss_ect
- ema_update_, 4 tensors:       torch._foreach_lerp_(shadows, weights, 1 - decay)

``grad``: x (input for the loss) requires grad, as in a training forward (the graph is built, no
backward runs). torch.compile of the eager lines runs for the gaussian_noise and pseudo-Huber cases
(its guard checks and wrapper are a per-call cost too).

Two ways to run:

- in the suite (``python -m benchmarks.run``): pytest-benchmark, one case at a time;
- ``python -m benchmarks.bench_overhead [--rounds R] [--compile]``: every provider of a case
  interleaved in one process (round r times each provider in turn), timed in CPU time on one
  thread, which is what the shared machine's swings require for a ratio; prints a markdown table
  of the median per-call time and the ratio noisefast / eager. benchmarks/NOTES.md records its
  results.
"""
from __future__ import annotations

import argparse
import datetime
import statistics
import time
from typing import Callable, Dict, List, Tuple

import pytest
import torch

import noisefast
from noisefast.reference.perturbation import add_noise_eager, consistency_pair_eager
from noisefast.reference.pseudo_huber import pseudo_huber_loss_ect

from .common import compiled, measure

NUMELS = [1, 1000]
BATCH = 4  # samples of the per-sample ops (one sample at numel 1)
STD = 0.1
DECAY = 0.999
COMPILED_CASES = ("gaussian_noise_float", "pseudo_huber_loss")


def eager_gaussian_noise(x, std):
    return x + std * torch.randn_like(x)


def eager_pseudo_huber(input, target):
    return pseudo_huber_loss_ect(input, target)


def _schedule(step: int) -> float:
    return 1.0 - step / 10_000


def case_functions(case: str, numel: int, grad: bool) -> Dict[str, Callable[[], object]]:
    """provider -> a no-argument call, for one case at numel elements."""
    batch = BATCH if numel >= BATCH else 1
    x = torch.randn(batch, max(numel // batch, 1))
    if grad:
        x.requires_grad_()
    if case == "gaussian_noise_float":
        return {"eager": lambda: eager_gaussian_noise(x, STD),
                "compile": lambda: compiled(eager_gaussian_noise, ("overhead_gaussian_noise", grad))(x, STD),
                "noisefast": lambda: noisefast.gaussian_noise(x, STD)}
    if case == "gaussian_noise_tensor":
        std = torch.tensor(STD)
        return {"eager": lambda: eager_gaussian_noise(x, std),
                "noisefast": lambda: noisefast.gaussian_noise(x, std)}
    if case == "GaussianNoise_scheduled":
        module = noisefast.GaussianNoise(STD, schedule=_schedule).train()
        return {"eager": lambda: eager_gaussian_noise(x, STD * _schedule(module.num_steps)),
                "noisefast": lambda: module(x)}
    if case == "add_noise":
        sigma = torch.rand(batch) + 0.5
        return {"eager": lambda: add_noise_eager(x, sigma),
                "noisefast": lambda: noisefast.add_noise(x, sigma)}
    if case == "consistency_pair":
        sigma, sigma_next = torch.rand(batch) + 0.5, torch.rand(batch) + 2.0
        return {"eager": lambda: consistency_pair_eager(x, sigma, sigma_next),
                "noisefast": lambda: noisefast.consistency_pair(x, sigma, sigma_next)}
    if case == "pseudo_huber_loss":
        target = torch.randn(x.shape)
        return {"eager": lambda: eager_pseudo_huber(x, target),
                "compile": lambda: compiled(eager_pseudo_huber, ("overhead_pseudo_huber", grad))(x, target),
                "noisefast": lambda: noisefast.pseudo_huber_loss(x, target)}
    if case == "ema_update_":
        weights = [torch.randn(numel) for _ in range(4)]
        shadows = [w.clone() for w in weights]
        return {"eager": lambda: torch._foreach_lerp_(shadows, weights, 1 - DECAY),
                "noisefast": lambda: noisefast.ema_update_(shadows, weights, DECAY)}
    raise ValueError(f"unknown case {case!r}")


CASES: List[Tuple[str, bool]] = [
    ("gaussian_noise_float", False), ("gaussian_noise_float", True),
    ("gaussian_noise_tensor", False), ("gaussian_noise_tensor", True),
    ("GaussianNoise_scheduled", True),
    ("add_noise", False), ("add_noise", True),
    ("consistency_pair", False), ("consistency_pair", True),
    ("pseudo_huber_loss", False), ("pseudo_huber_loss", True),
    ("ema_update_", False),
]


def _case_id(case) -> str:
    name, grad = case
    return f"{name}-{'grad' if grad else 'nograd'}"


@pytest.mark.parametrize("numel", NUMELS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
@pytest.mark.parametrize("provider", ["eager", "compile", "noisefast"])
def test_overhead(benchmark, provider, case, numel):
    if torch.cuda.is_available():
        pytest.skip("the per-call overhead benchmark measures CPU calls")
    name, grad = case
    fns = case_functions(name, numel, grad)
    if provider not in fns:
        pytest.skip(f"no {provider} provider for {name}")
    # One call per round, many rounds: the report's median is the time of one call.
    measure(benchmark, fns[provider], op=f"overhead:{_case_id(case)}", provider=provider, numel=numel,
            dtype=torch.float32, bytes_moved=0, device=torch.device("cpu"), rounds=500)


# ---- the interleaved run ---------------------------------------------------------------------------

def interleaved(fns: Dict[str, Callable[[], object]], rounds: int, calls: int) -> Dict[str, float]:
    """Median over rounds of the mean per-call time (us) of each provider, the providers timed in
    turn inside each round. The time is this process's CPU time (time.process_time), not wall
    time: on a shared machine the wall clock also counts the time other processes hold the cores,
    which swings by 10x between rounds."""
    for fn in fns.values():  # warm-up (and compile)
        for _ in range(3):
            fn()
    samples: Dict[str, List[float]] = {p: [] for p in fns}
    for _ in range(rounds):
        for provider, fn in fns.items():
            start = time.process_time()
            for _ in range(calls):
                fn()
            samples[provider].append((time.process_time() - start) / calls * 1e6)
    return {p: statistics.median(v) for p, v in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the eager lines")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1: small tensors use one thread, and an idle "
                             "OpenMP thread would add its spinning to the CPU time)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"# per-call CPU time (process_time), CPU ({torch.get_num_threads()} threads), torch {torch.__version__}, "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; median of {args.rounds} rounds "
          f"x {args.calls} calls, providers interleaved\n")
    print("| case | numel | eager us | noisefast us | ratio |" + (" compile us |" if args.compile else ""))
    print("|---|---|---|---|---|" + ("---|" if args.compile else ""))
    for case in CASES:
        for numel in NUMELS:
            fns = case_functions(case[0], numel, case[1])
            if not args.compile:
                fns.pop("compile", None)
            t = interleaved(fns, args.rounds, args.calls)
            row = (f"| {_case_id(case)} | {numel} | {t['eager']:.1f} | {t['noisefast']:.1f} | "
                   f"{t['noisefast'] / t['eager']:.2f} |")
            if args.compile:
                row += f" {t['compile']:.1f} |" if "compile" in t else " |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
