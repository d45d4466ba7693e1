"""The gradient of consistency_pair and add_noise with respect to a tensor sigma
(noisefast::perturbation_noise_grad): per-sample sums of grad * noise with the noise regenerated
inside the reduction, on every backend that runs here (Triton through the interpreter), against
the reference and against autograd through the eager formula; and the memory it needs."""
from __future__ import annotations

import pytest
import torch

import noisefast
from noisefast._dtypes import math_dtype
from noisefast.ops.perturbation import add_noise, consistency_pair, perturbation_noise_grad_op
from noisefast.random import STREAM_NOISE
from noisefast.reference import perturbation as R
from noisefast.reference.philox import normal_stream

from helpers import assert_close, backend_params, run_on

BACKENDS = backend_params()
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SEED = 0x2545F4914F6CDD1D
# (count, sample_inner, channel_inner): samples narrower than a Triton chunk, one element per sample,
# samples wider than a chunk (several chunks each) with narrow and wide offset-noise rows, one sample.
LAYOUTS = [(3, 385, 77), (5, 1, 1), (2, 2500, 1250), (2, 2500, 25), (1, 1031, 1031)]
OFFSETS = [0, 3, 2 ** 33 + 1]


def seed_tensor() -> torch.Tensor:
    return torch.tensor([SEED], dtype=torch.int64)


def grad_like(numel: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    return torch.randn(numel, generator=torch.Generator().manual_seed(seed)).to(dtype)


def exact_sums(grads, input_perturbation, offset_noise, count, sample_inner, channel_inner, offset):
    """The reference in float64 from the same normals: what the kernels' sums approximate."""
    return R.perturbation_noise_grad([g.double() for g in grads], seed_tensor(), input_perturbation, offset_noise,
                                     count, sample_inner, channel_inner, offset)


def sum_tolerance(grads, dtype) -> float:
    """The normals agree across backends to a few float32 ulps (log/sin/cos), and float32 math
    rounds each product: 1e-6 of sum |g| * max |noise| (noise < 6 in these sizes)."""
    return max(float(g.double().abs().sum()) for g in grads) * 6.0 * 1e-6


# (dtype, layout, (gamma, offset_noise), number of grads): every dtype on one layout, every layout
# with and without the noise terms (float32), and with float64.
NOISE_GRAD_CASES = (
    [(dtype, LAYOUTS[0], (0.15, 0.2), 2) for dtype in DTYPES]
    + [(dtype, LAYOUTS[0], (0.0, 0.0), 1) for dtype in DTYPES]
    + [(torch.float32, layout, scales, 2) for layout in LAYOUTS[1:] for scales in ((0.0, 0.0), (0.15, 0.2))]
    + [(torch.float64, layout, (0.15, 0.2), 1) for layout in LAYOUTS[1:]])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", NOISE_GRAD_CASES,
                         ids=lambda c: f"{str(c[0])[6:]}-{'x'.join(map(str, c[1]))}-{c[2][0]}-{c[2][1]}-{c[3]}")
def test_noise_grad_matches_reference(backend, case):
    dtype, layout, (gamma, offset_noise), num_grads = case
    count, sample_inner, channel_inner = layout
    numel = count * sample_inner
    grads = [grad_like(numel, dtype, seed=k) for k in range(num_grads)]
    for offset in OFFSETS:
        out = run_on(backend, perturbation_noise_grad_op, grads, seed_tensor(), gamma, offset_noise, count,
                     sample_inner, channel_inner, offset)
        assert out.shape == (num_grads, count) and out.dtype == math_dtype(dtype)
        exact = exact_sums(grads, gamma, offset_noise, count, sample_inner, channel_inner, offset)
        tol = sum_tolerance(grads, dtype)
        assert_close(out.double(), exact, rtol=0.0, atol=tol, what=f"{backend} offset={offset}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noise_grad_noncontiguous_empty_and_trailing_samples(backend):
    # Non-contiguous grads (a transposed view); more samples than the elements reach (x of shape
    # [B, 0]); no elements at all.
    g = grad_like(6 * 40, torch.float32, seed=3).view(40, 6).t()
    out = run_on(backend, perturbation_noise_grad_op, [g], seed_tensor(), 0.0, 0.0, 6, 40, 1, 0)
    exact = exact_sums([g.contiguous()], 0.0, 0.0, 6, 40, 1, 0)
    assert_close(out.double(), exact, rtol=0.0, atol=sum_tolerance([g], torch.float32), what=backend)
    empty = torch.empty(4, 0)
    for grads in ([empty], [empty, empty]):
        out = run_on(backend, perturbation_noise_grad_op, grads, seed_tensor(), 0.1, 0.1, 4, 1, 1, 0)
        assert torch.equal(out, torch.zeros(len(grads), 4))


def test_noise_grad_does_not_depend_on_threads():
    # The CPU kernel splits its sums into fixed tasks: the result is the same for any thread count.
    grads = [grad_like(3 * 200_001, torch.float32, seed=4)]
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(run_on("cpu", perturbation_noise_grad_op, grads, seed_tensor(), 0.1, 0.0, 3, 200_001, 1, 5))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


# ---- through the public ops: autograd vs the eager formula ----------------------------------------

def z_of(x: torch.Tensor, generator_seed: int) -> torch.Tensor:
    """The z a public call with generator seeded generator_seed draws (its seed, stream STREAM_NOISE)."""
    seed = int(torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(generator_seed)))
    return normal_stream(x.numel(), seed, STREAM_NOISE, 0).double().view(x.shape)


SIGMA_SHAPES = [lambda b: (b,), lambda b: (b, 1, 1, 1), lambda b: (b, 1), lambda b: ()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sigma_shape", SIGMA_SHAPES, ids=["B", "B111", "B1", "0d"])
def test_consistency_pair_sigma_gradients(backend, dtype, sigma_shape):
    # Odd shape, non-contiguous x (a permuted view), per-sample or batch-wide sigma tensors; only
    # sigma needs grad, or both sigmas; one output or both used.
    base = torch.randn(5, 7, 3, 3, generator=torch.Generator().manual_seed(7)).to(dtype)
    x = base.permute(0, 2, 3, 1)  # [3, 3, 7, 5]-strided view of shape (5, 3, 3, 7)
    shape = sigma_shape(x.shape[0])
    if len(shape) > x.dim():
        shape = shape[:x.dim()]
    acc = math_dtype(dtype)
    sigma = (torch.rand(shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64) + 0.5).to(acc)
    sigma_next = sigma * 2
    w_cur = torch.randn(x.shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    w_next = torch.randn(x.shape, generator=torch.Generator().manual_seed(10)).to(dtype)
    z = z_of(x, 11)
    per_sample = sigma.dim() > 0
    for use_next in (False, True):
        s, t = sigma.clone().requires_grad_(), sigma_next.clone().requires_grad_()
        with noisefast.use_backend(backend):
            cur, nxt = consistency_pair(x, s, t, generator=torch.Generator().manual_seed(11))
            loss = (cur.to(acc) * w_cur.to(acc)).sum()
            if use_next:
                loss = loss + (nxt.to(acc) * w_next.to(acc)).sum()
            loss.backward()
        dims = tuple(range(1, x.dim())) if per_sample else tuple(range(x.dim()))
        want_s = (w_cur.double() * z).sum(dim=dims).reshape(s.shape)
        want_t = (w_next.double() * z).sum(dim=dims).reshape(t.shape) if use_next else torch.zeros(t.shape)
        tol = 2e-6 * float((w_cur.double().abs() * z.abs()).sum()) + 1e-12
        assert_close(s.grad.double(), want_s, rtol=0.0, atol=tol, what=f"{backend} sigma")
        assert_close(t.grad.double(), want_t.double(), rtol=0.0, atol=tol, what=f"{backend} sigma_next")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gamma,offset_noise", [(0.0, 0.0), (0.1, 0.3)])
def test_add_noise_sigma_gradient(backend, dtype, gamma, offset_noise):
    x = torch.randn(3, 4, 5, 7, generator=torch.Generator().manual_seed(12)).to(dtype)[:, :, 1:, :]  # non-contiguous
    acc = math_dtype(dtype)
    sigma = (torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(13)) + 0.1).to(acc)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(14)).to(dtype)
    s = sigma.clone().requires_grad_()
    with noisefast.use_backend(backend):
        noisy, target = add_noise(x, s, input_perturbation=gamma, offset_noise=offset_noise,
                                  generator=torch.Generator().manual_seed(15))
        (noisy.to(acc) * w.to(acc)).sum().backward()
    seed = int(torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(15)))
    _, noise = R._add_noise_noise(x.numel(), seed, gamma, offset_noise, x.numel() // 12, 0, torch.float64, "cpu")
    want = (w.double().reshape(3, -1) * noise.view(3, -1)).sum(dim=1)
    tol = 2e-6 * float((w.double().abs().reshape(3, -1) * noise.abs().view(3, -1)).sum()) + 1e-12
    assert_close(s.grad.double(), want, rtol=0.0, atol=tol, what=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    # Batch-wide (0-d) sigmas, per-sample ones on samples of one element, an empty batch.
    seed_gen = lambda: torch.Generator().manual_seed(16)  # noqa: E731
    cases = [(torch.randn(4, 3, 5, dtype=torch.float64), ()), (torch.randn(6, dtype=torch.float64), (6,)),
             (torch.randn(3, 0, dtype=torch.float64), (3,))]
    for x, shape in cases:
        s = (torch.rand(shape, dtype=torch.float64) + 0.5).requires_grad_()
        t = (torch.rand(shape, dtype=torch.float64) + 1.5).requires_grad_()
        with noisefast.use_backend(backend):
            torch.autograd.gradcheck(lambda a, b: consistency_pair(x, a, b, generator=seed_gen()), (s, t),
                                     fast_mode=True)
            torch.autograd.gradcheck(
                lambda a: add_noise(x, a, input_perturbation=0.1, generator=seed_gen())[0], (s,), fast_mode=True)


# ---- memory: the backward never holds a full-size noise ----------------------------------------------

def largest_allocation(fn) -> int:
    """Bytes of the largest CPU allocation made while fn runs (torch.profiler's memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max([e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0], default=0)


@pytest.mark.parametrize("op", ["consistency_pair", "add_noise"])
def test_sigma_backward_allocates_no_full_size_noise(op):
    numel = 8 * 65536
    x = torch.randn(8, 65536)
    sigma = torch.rand(8, requires_grad=True)
    g = torch.randn(8, 65536)
    with noisefast.use_backend("cpu"):
        if op == "consistency_pair":
            out = consistency_pair(x, sigma, 1.0)
            grads = (g, g)
        else:
            out = add_noise(x, sigma, input_perturbation=0.1, offset_noise=0.1)[:1]
            grads = (g,)
        biggest = largest_allocation(lambda: torch.autograd.grad(out, sigma, grads))
    # Before: a float32 z (numel * 4 bytes) and products of that size.
    assert biggest < numel, f"the backward allocated {biggest} bytes at once"


def test_opcheck():
    grads = [grad_like(60, torch.float32, seed=k).view(3, 20) for k in range(2)]
    torch.library.opcheck(perturbation_noise_grad_op, (grads, seed_tensor(), 0.1, 0.2, 3, 20, 5, 0))
    torch.library.opcheck(perturbation_noise_grad_op, (grads[:1], seed_tensor(), 0.0, 0.0, 3, 20, 1, 3))
