"""GPU paths the per-op test files do not reach: gradients computed on CUDA, element indices past
2^31 in the CUDA C++ and Triton noise kernels, and the sample-blocked layouts (channels-last, a
storage offset) in the Triton reductions.

The noise stream is the same on every backend, so a CUDA result is compared with the CPU kernel's
result for the same seed (both against the reference elsewhere). The checks are written as
functions of the device; on a machine without a GPU they run on the CPU (CPU against CPU: a check
of the test itself), and the `cuda` tests run them on the GPU.
"""
import pytest
import torch

import noisefast
from noisefast.ops.gaussian_noise import broadcast_as_scale, gaussian_noise_op
from noisefast.ops.perturbation import add_noise_op, consistency_pair_op
from noisefast.reference.philox import normal_stream

from helpers import assert_close, run_on

SEED = 0x5DEECE66D2F


def _grads(device: str, dtype: torch.dtype):
    """Outputs and gradients of the three noise ops with tensor arguments, on ``device``."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 7, generator=gen, dtype=torch.float64).to(dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    std = (torch.rand(3, 1, 1, generator=gen, dtype=torch.float64) + 0.1).to(acc)
    sigma = (torch.rand(4, generator=gen, dtype=torch.float64) * 2).to(acc)
    sigma_next = sigma + 0.5
    alpha = torch.rand(4, generator=gen, dtype=torch.float64).to(acc)
    weights = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    x, std, sigma, sigma_next, alpha, weights = (t.to(device) for t in (x, std, sigma, sigma_next, alpha, weights))
    seed = torch.tensor([SEED], device=device)
    leaves = [t.clone().requires_grad_() for t in (x, std, sigma, sigma_next, alpha)]
    lx, lstd, lsigma, lsigma_next, lalpha = leaves
    scale, inner = broadcast_as_scale(lstd, x.shape)
    noisy = gaussian_noise_op(lx, seed, 1.0, scale, inner, 0, 1, 1)
    x_cur, x_next = consistency_pair_op(lx, seed, lsigma, lsigma_next, x.numel() // 4, 3)
    dn, target = add_noise_op(lx, seed, lalpha, lsigma, 0.1, 0.2, x.numel() // 4, 35, 5)
    outputs = [noisy, x_cur, x_next, dn, target]
    total = sum((o.to(acc) * weights.to(acc)).sum() for o in outputs)
    grads = torch.autograd.grad(total, leaves)
    return [t.detach().cpu().double() for t in outputs + list(grads)]


def _check_grads(device: str, dtype: torch.dtype):
    got = _grads(device, dtype)
    want = run_on("cpu", _grads, "cpu", dtype)
    names = ["gaussian_noise", "x_cur", "x_next", "noisy", "target", "d x", "d std", "d sigma", "d sigma_next",
             "d alpha"]
    # The noise is float32 on every backend (its last bit may differ between them: libm vs
    # libdevice vs the CPU's vector log/sincos), so float64 outputs agree to float32 precision.
    rtol, atol = (1e-2, 1e-2) if dtype == torch.bfloat16 else (1e-5, 1e-5)
    for g, w, name in zip(got, want, names):
        assert_close(g, w, rtol=rtol, atol=atol, what=f"{device} {dtype} {name}")


def test_gradient_check_runs_on_cpu():
    _check_grads("cpu", torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_cuda_gradients_match_the_cpu_kernels(dtype):
    _check_grads("cuda", dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_noise_past_2_pow_31_elements(backend):
    """randn and gaussian_noise write element indices beyond int32 correctly (CUDA C++ and Triton)."""
    n = 2 ** 31 + 5
    seed = torch.tensor([SEED], device="cuda")
    tail = normal_stream(1000, SEED, 0, n - 1000, device="cuda").half()
    out = torch.empty(n, dtype=torch.float16, device="cuda")
    run_on(backend, torch.ops.noisefast.randn_out, out, seed, 0, 0)
    assert_close(out[-1000:], tail, rtol=2 ** -10, atol=1e-3, what=f"{backend} randn tail")
    out.zero_()
    noisy = run_on(backend, gaussian_noise_op, out, seed, 1.0, None, 1, 0, 1, 1)
    del out
    assert_close(noisy[-1000:], tail, rtol=2 ** -10, atol=1e-3, what=f"{backend} gaussian_noise tail")


def _layouts(device: str):
    """pseudo_huber_loss and consistency_output on channels-last inputs and on inputs one element
    into their storage (not 16-byte aligned), with gradients, on ``device``."""
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1 + 6 * 3 * 8 * 8, generator=gen).to(device)
    other = torch.randn(6, 3, 8, 8, generator=gen).to(device)
    sigma = (torch.rand(6, generator=gen) + 0.01).to(device)
    shifted = base[1:].view(6, 3, 8, 8)  # 4 bytes into its storage
    channels_last = other.contiguous(memory_format=torch.channels_last)
    results = []
    for a, b in ((shifted, other), (channels_last, shifted)):
        a = a.detach().requires_grad_()  # a leaf with a's storage offset and strides
        loss = noisefast.pseudo_huber_loss(a, b, reduction="none")
        out = noisefast.consistency_output(a, b, sigma)
        grad, = torch.autograd.grad(loss.sum() + out.square().sum(), a)
        results += [loss.detach().cpu(), out.detach().cpu(), grad.cpu()]
    return results


def test_layout_check_runs_on_cpu():
    for g, w in zip(_layouts("cpu"), run_on("reference", _layouts, "cpu")):
        assert_close(g, w, rtol=1e-5, atol=1e-6, what="cpu layouts")


@pytest.mark.cuda
def test_cuda_sample_blocked_layouts():
    want = run_on("cpu", _layouts, "cpu")
    for g, w in zip(_layouts("cuda"), want):
        assert_close(g, w, rtol=1e-5, atol=1e-5, what="cuda layouts")


@pytest.mark.triton
def test_triton_layouts_and_gradients_in_the_interpreter():
    want = run_on("cpu", _layouts, "cpu")
    for g, w in zip(run_on("triton", _layouts, "cpu"), want):
        assert_close(g, w, rtol=1e-5, atol=1e-5, what="triton layouts")
    want = run_on("cpu", _grads, "cpu", torch.float32)
    for g, w in zip(run_on("triton", _grads, "cpu", torch.float32), want):
        assert_close(g, w, rtol=1e-5, atol=1e-5, what="triton gradients")
