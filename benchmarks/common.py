"""What every benchmark shares: providers, timing done right, bytes moved, device facts.

A benchmark file parametrises over (provider, size, dtype) and calls :func:`measure`, which times
with pytest-benchmark and records in ``extra_info`` what the report needs: the op, the provider,
the bytes the op must move (so the report can state GB/s and % of the copy bandwidth), and for
torch.compile the one-off compile time (excluded from the timing).

Providers: "eager" (the eager PyTorch users write today, usually noisefast.reference or the public
code it quotes), "compile" (torch.compile of that same eager function), "noisefast".
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional, Sequence

import torch

PROVIDERS = ("eager", "compile", "noisefast")
QUICK = os.environ.get("NOISEFAST_BENCH_QUICK", "1" if not torch.cuda.is_available() else "0") == "1"

# Which cases run (python -m benchmarks.run --select, passed to pytest through the environment):
# "all"; "headline": only the cases a benchmark file marks headline=True in measure() (one size
# each of the consistency step, pseudo-Huber forward + backward, EMA, gaussian_noise and the iCT
# pipeline: what a short GPU run must measure, torch.compile included); "sweep": every other case,
# without torch.compile (a compile costs up to a minute).
SELECTIONS = ("all", "headline", "sweep")
SELECT = os.environ.get("NOISEFAST_BENCH_SELECT", "all")


def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: Optional[torch.device] = None) -> str:
    device = device or bench_device()
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{os.cpu_count()}core"


def sizes(cpu: Sequence[int], cuda: Sequence[int]) -> Sequence[int]:
    """The size sweep for this device (the CPU sweep is reduced so `make bench` takes minutes)."""
    return cuda if bench_device().type == "cuda" else cpu


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_COMPILED: Dict[tuple, Callable] = {}


def compiled(fn: Callable, key: tuple) -> Callable:
    """torch.compile(fn), cached per key (compile once per op and configuration)."""
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn)
    return _COMPILED[key]


def selected(provider: str, headline: bool) -> bool:
    """Whether a case runs under the current selection (SELECT)."""
    if SELECT == "headline":
        return headline
    if SELECT == "sweep":
        return not headline and provider != "compile"
    return True


def measure(benchmark, fn: Callable[[], object], *, op: str, provider: str, numel: int, dtype: torch.dtype,
            bytes_moved: int, device: Optional[torch.device] = None, rounds: Optional[int] = None,
            headline: bool = False, **extra) -> None:
    """Time ``fn`` (no arguments) with pytest-benchmark; CUDA work is synchronised inside the call.

    Warm-up calls run first (for "compile" the first of them compiles; its time is recorded as
    compile_s and not counted). ``headline``: this case is one of the headline set (see SELECT);
    a case the selection leaves out is skipped before anything runs.
    """
    if not selected(provider, headline):
        import pytest
        pytest.skip(f"not in the {SELECT!r} selection")
    device = device or bench_device()
    start = time.perf_counter()
    fn()
    synchronize(device)
    first_call_s = time.perf_counter() - start
    for _ in range(2):
        fn()
    synchronize(device)

    def timed():
        fn()
        synchronize(device)

    if rounds is None:
        rounds = 5 if QUICK else 30
    benchmark.extra_info.update(
        op=op, provider=provider, numel=int(numel), dtype=str(dtype).replace("torch.", ""),
        bytes=int(bytes_moved), device=device_name(device), **extra)
    if provider == "compile":
        benchmark.extra_info["compile_s"] = round(first_call_s, 3)
    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=1)


def element_size(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
