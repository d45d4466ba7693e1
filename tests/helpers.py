"""Assertions shared by the tests: comparisons that explain their failures, the low-precision
error rule, and the list of CPU/GPU backends to run each op on."""
from __future__ import annotations

import pytest
import torch

import noisefast

LOW_PRECISION = (torch.float16, torch.bfloat16)
ALL_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def one_rounding_tolerance(dtype: torch.dtype) -> dict:
    """rtol/atol for two results of the same float32 (float64) computation on values of order 1,
    rounded once to ``dtype``: they may differ by one unit in the last place of the result (rtol:
    2^-mantissa bits; an FMA on one side can move a value across a rounding boundary) plus the math
    type's own rounding where terms cancel (atol), and no more."""
    rtol = {torch.float64: 2.0 ** -52, torch.float32: 2.0 ** -23, torch.float16: 2.0 ** -10,
            torch.bfloat16: 2.0 ** -7}[dtype]
    return dict(rtol=rtol, atol=1e-15 if dtype == torch.float64 else 1e-6)


def backend_params():
    """pytest params for each backend that runs CPU tensors here (Triton through the interpreter)."""
    return [
        pytest.param("reference", id="reference"),
        pytest.param("cpu", id="cpu"),
        pytest.param("triton", id="triton", marks=pytest.mark.triton),
    ]


def exact_mix(x: torch.Tensor, index: torch.Tensor, lam: float) -> torch.Tensor:
    """mixup's blend lam * x + (1 - lam) * x[index] in float64, the exact value kernels round."""
    x64 = x.double()
    return lam * x64 + (1 - lam) * x64[index]


def run_on(backend: str, fn, *args, **kwargs):
    with noisefast.use_backend(backend):
        return fn(*args, **kwargs)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, *, rtol: float, atol: float, what: str = "") -> None:
    """torch.testing.assert_close, printing the worst mismatches (index, actual, expected)."""
    try:
        torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)
    except AssertionError as exc:
        a = actual.detach().double().reshape(-1).cpu()
        e = expected.detach().double().reshape(-1).cpu()
        err = ((a - e).abs() - atol - rtol * e.abs()).nan_to_num(float("inf"))
        worst = err.topk(min(5, err.numel())).indices.tolist()
        rows = "\n".join(f"  [{i}] actual={a[i].item():.9g} expected={e[i].item():.9g}" for i in worst)
        raise AssertionError(f"{what}\nworst mismatches:\n{rows}\n{exc}") from None


def max_abs_error(actual: torch.Tensor, exact: torch.Tensor) -> float:
    return (actual.double() - exact.double()).abs().max().item() if actual.numel() else 0.0


def assert_low_precision_rule(kernel_out: torch.Tensor, eager_low: torch.Tensor, exact: torch.Tensor,
                              *, floor: float = 0.0, what: str = "") -> None:
    """flash-attention's rule: err(kernel) <= 2 * err(eager at the same precision) (+ floor),
    both measured against an fp64 computation ``exact``."""
    k_err = max_abs_error(kernel_out, exact)
    e_err = max_abs_error(eager_low, exact)
    assert k_err <= 2 * e_err + floor, (
        f"{what}: kernel error {k_err:.3g} exceeds twice eager's error {e_err:.3g} (+{floor:.3g})")


def assert_schedule_steps_without_recompile(noise_module, eager, x, steps: int = 3) -> None:
    """Step ``noise_module``'s schedule ``steps`` times; torch.compile(eager) must not recompile and
    must match ``eager`` under the same seed. Call after one warm-up call of the compiled model."""
    compiled = torch.compile(eager, fullgraph=True)
    torch.manual_seed(5)
    compiled(x)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(steps):
            noise_module.step()
            torch.manual_seed(5)
            out = compiled(x)
            torch.manual_seed(5)
            torch.testing.assert_close(out, eager(x))
