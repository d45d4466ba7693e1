"""foreach_gaussian_noise_ (in place) and foreach_gaussian_noise (out of place): the stream layout, exact agreement with the reference on every
backend, dtypes, layouts, std forms, statistics, errors, torch.compile and opcheck."""
import math

import pytest
import torch

import noisefast
from noisefast.ops.gaussian_noise import gaussian_noise
from noisefast.ops.foreach_gaussian_noise import (foreach_gaussian_noise, foreach_gaussian_noise_,
                                                  foreach_gaussian_noise_op, foreach_gaussian_noise_op_)
from noisefast.reference.foreach_gaussian_noise import stream_bases
from noisefast.reference.philox import normal_stream

from helpers import (ALL_FLOAT_DTYPES, LOW_PRECISION, assert_close, assert_low_precision_rule,
                     one_rounding_tolerance, run_on)

BACKENDS = ["reference", "cpu"]
# Sizes around the CPU kernel's chunk (256 normals) and task (16384) boundaries, and the CUDA
# kernel's chunk (65536) boundary; an empty tensor in the middle.
SIZES = [1, 2, 3, 4, 5, 255, 0, 257, 16385, 70001]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def drawn_seed(seed=0):
    """The seed foreach_gaussian_noise_ draws from gen(seed)."""
    return torch.randint(0, 2 ** 63 - 1, (1,), generator=gen(seed)).item()


def expected(tensors, stds, seed=0):
    """float64 t + std_k * z_k, z_k = stream elements base_k .. base_k + numel - 1."""
    s = drawn_seed(seed)
    bases = stream_bases([t.numel() for t in tensors])
    return [t.double() + std * normal_stream(t.numel(), s, 0, b, device=t.device).double().view(t.shape)
            for t, b, std in zip(tensors, bases, stds)]


def make(sizes, dtype=torch.float32, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g, dtype=torch.float64).to(dtype).to(device) for n in sizes]


def test_stream_bases_round_each_tensor_up_to_whole_philox_blocks():
    assert stream_bases([1, 4, 0, 5, 8, 3]) == [0, 4, 8, 8, 16, 24]


@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_stream_layout_fp32(backend):
    ts = make(SIZES)
    stds = [0.3 * (k + 1) for k in range(len(ts))]
    want = expected(ts, stds)
    out = run_on(backend, foreach_gaussian_noise_, ts, stds, generator=gen())
    assert out is ts
    for k, (t, e) in enumerate(zip(ts, want)):
        assert_close(t, e.float(), rtol=1e-6, atol=1e-6, what=f"{backend} tensor {k} ({t.numel()} elements)")


def test_cpu_kernel_equals_reference_backend():
    a, b = make(SIZES), make(SIZES)
    run_on("cpu", foreach_gaussian_noise_, a, 0.7, generator=gen(3))
    run_on("reference", foreach_gaussian_noise_, b, 0.7, generator=gen(3))
    for x, y in zip(a, b):
        assert_close(x, y, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1,), (7,), (1025,), (3, 5, 7), (2, 3, 17, 9)])
def test_one_tensor_list_is_exactly_gaussian_noise(backend, shape):
    x = torch.randn(shape)
    want = run_on(backend, gaussian_noise, x, 0.45, generator=gen(5))
    got = x.clone()
    run_on(backend, foreach_gaussian_noise_, [got], 0.45, generator=gen(5))
    assert torch.equal(got, want)
    single = x.clone()
    assert run_on(backend, foreach_gaussian_noise_, single, 0.45, generator=gen(5)) is single  # a tensor is a 1-list
    assert torch.equal(single, want)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision_rule(backend, dtype):
    exact_in = make([1000, 37, 4099], torch.float64)
    ts = [t.to(dtype) for t in exact_in]
    run_on(backend, foreach_gaussian_noise_, ts, 0.8, generator=gen(2))
    s = drawn_seed(2)
    for t, x, b in zip(ts, exact_in, stream_bases([1000, 37, 4099])):
        z = normal_stream(x.numel(), s, 0, b).double()
        exact = x.to(dtype).double() + 0.8 * z
        eager = x.to(dtype).add(z.to(dtype), alpha=0.8)  # what users write, at dtype's precision
        assert t.dtype == dtype
        assert_low_precision_rule(t, eager, exact, what=f"{backend} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_and_mixed_dtypes_in_one_call(backend):
    ts = [make([33], dt)[0] for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.float64)]
    before = [t.clone() for t in ts]
    run_on(backend, foreach_gaussian_noise_, ts, [0.5, 0.25, 1.0, 2.0, 0.125], generator=gen(9))
    want = expected(before, [0.5, 0.25, 1.0, 2.0, 0.125], seed=9)
    # float64 math on float32 normals: z's last-ulp differences between backends (log/sin/cos) remain
    assert_close(ts[0], want[0], rtol=1e-6, atol=1e-7, what="float64")
    assert_close(ts[4], want[4], rtol=1e-6, atol=1e-7, what="float64 after the others")
    assert_close(ts[1], want[1].float(), rtol=1e-6, atol=1e-6, what="float32")
    for t, w in zip(ts[2:4], want[2:4]):  # rounded once from the float32 result
        assert_close(t.double(), w, rtol=2 ** -7, atol=1e-3, what=str(t.dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_views_are_updated_in_place_and_nothing_else(backend):
    base = torch.randn(10, 13)
    original = base.clone()
    view = base[1:9, 2:11:3]           # strided view
    transposed = torch.randn(6, 5).t()  # dense, not contiguous: noise follows the logical order
    plain = torch.randn(21)
    ts = [view, transposed, plain]
    want = expected([t.clone() for t in ts], [0.6, 0.6, 0.6], seed=4)
    run_on(backend, foreach_gaussian_noise_, ts, 0.6, generator=gen(4))
    for k, (t, e) in enumerate(zip(ts, want)):
        assert_close(t, e.float(), rtol=1e-6, atol=1e-6, what=f"{backend} tensor {k}")
    mask = torch.ones_like(base, dtype=torch.bool)
    mask[1:9, 2:11:3] = False
    assert torch.equal(base[mask], original[mask])
    assert view.data_ptr() == base[1:9, 2:11:3].data_ptr()


@pytest.mark.parametrize("backend", BACKENDS)
def test_std_zero_leaves_tensors_bit_identical(backend):
    ts = make([5, 300]) + [torch.tensor([-0.0, 0.0, float("nan"), float("inf")])]
    before = [t.clone() for t in ts]
    run_on(backend, foreach_gaussian_noise_, ts, 0.0, generator=gen())
    for t, b in zip(ts, before):
        assert torch.equal(t.view(torch.int32), b.view(torch.int32))
    # per-tensor: only the tensor with std 0 is untouched
    run_on(backend, foreach_gaussian_noise_, ts[:2], [0.0, 1.0], generator=gen())
    assert torch.equal(ts[0], before[0]) and not torch.equal(ts[1], before[1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("std_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_zero_dim_tensor_std(backend, std_dtype):
    std = torch.tensor(0.37, dtype=std_dtype)
    ts = make([17, 1000])
    want = expected(ts, [float(std.float())] * 2, seed=6)
    run_on(backend, foreach_gaussian_noise_, ts, std, generator=gen(6))
    for t, e in zip(ts, want):
        assert_close(t, e.float(), rtol=1e-6, atol=1e-6, what=str(std_dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_tensors_and_empty_list(backend):
    assert run_on(backend, foreach_gaussian_noise_, [], 0.5) == []
    e = torch.empty(0, 3)
    ts = [e, torch.zeros(4)]
    run_on(backend, foreach_gaussian_noise_, ts, 0.5, generator=gen())
    assert e.shape == (0, 3) and ts[1].abs().sum() > 0


def test_out_of_place_matches_in_place_and_passes_gradients_through():
    ts = [t.requires_grad_() for t in make([7, 300, 1])]
    copies = run_on("cpu", foreach_gaussian_noise, ts, [0.5, 1.0, 2.0], generator=gen(12))
    ref_copies = run_on("reference", foreach_gaussian_noise, ts, [0.5, 1.0, 2.0], generator=gen(12))
    inplace = [t.detach().clone() for t in ts]
    run_on("cpu", foreach_gaussian_noise_, inplace, [0.5, 1.0, 2.0], generator=gen(12))
    for c, r, i, t in zip(copies, ref_copies, inplace, ts):
        assert torch.equal(c, i)
        assert_close(c, r, rtol=1e-6, atol=1e-6)
        assert c.is_contiguous() and c.dtype == t.dtype
    sum(((k + 1) * c).sum() for k, c in enumerate(copies)).backward()
    for k, t in enumerate(ts):
        assert torch.equal(t.grad, torch.full_like(t, k + 1.0))


def test_out_of_place_copy_of_a_view_and_std_zero():
    base = torch.randn(6, 8)
    view = base[:, ::2]
    (copy,) = run_on("cpu", foreach_gaussian_noise, [view], 0.0, generator=gen(1))
    assert copy.is_contiguous() and torch.equal(copy, view)
    (copy,) = run_on("cpu", foreach_gaussian_noise, [view], 1.0, generator=gen(1))
    (ref,) = run_on("reference", foreach_gaussian_noise, [view], 1.0, generator=gen(1))
    assert_close(copy, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_statistics_mean_variance_and_independence(backend):
    n = 400_000 if backend == "cpu" else 100_000
    ts = [torch.zeros(n), torch.zeros(n), torch.zeros(n, dtype=torch.float64)]
    run_on(backend, foreach_gaussian_noise_, ts, [0.5, 2.0, 1.0], generator=gen(11))
    for t, std in zip(ts, [0.5, 2.0, 1.0]):
        x = t.double()
        assert abs(x.mean().item()) < 5 * std / math.sqrt(n)
        # var of the sample variance of normals: 2 std^4 / n
        assert abs(x.var().item() - std ** 2) < 5 * std ** 2 * math.sqrt(2 / n)
    corr = torch.corrcoef(torch.stack([ts[0].double() / 0.5, ts[1].double() / 2.0, ts[2]]))
    off = corr[~torch.eye(3, dtype=torch.bool)]
    assert off.abs().max().item() < 5 / math.sqrt(n)
    # successive calls draw fresh seeds
    a = torch.zeros(1000)
    foreach_gaussian_noise_(a, 1.0)
    b = torch.zeros(1000)
    foreach_gaussian_noise_(b, 1.0)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_inputs_raise_naming_the_argument_before_writing(backend):
    good = torch.zeros(5)

    def check(exc, match, tensors, std=0.5):
        with pytest.raises(exc, match=match):
            run_on(backend, foreach_gaussian_noise_, tensors, std)
        assert torch.equal(good, torch.zeros(5)), "written before raising"

    check(TypeError, r"tensors\[1\]", [good, torch.zeros(3, dtype=torch.int64)])
    check(TypeError, r"tensors\[1\]", [good, torch.zeros(3, dtype=torch.complex64)])
    check(TypeError, r"tensors\[1\]", [good, "x"])
    check(TypeError, "tensors", {good})
    check(ValueError, r"tensors\[0\] and tensors\[1\]", [good, good])
    check(ValueError, r"tensors\[0\] and tensors\[2\]", [good, torch.zeros(2), good.view(5)])
    check(ValueError, r"tensors\[0\] and tensors\[1\]", [good, good[1:3]])  # partial overlap
    check(ValueError, r"tensors\[1\]", [good, torch.zeros(1).expand(4)])
    check(TypeError, r"tensors\[1\]", [good, torch.zeros(3).to_sparse()])
    check(ValueError, "std", [good], -0.1)
    check(ValueError, "std", [good], float("nan"))
    check(ValueError, "std", [good], float("inf"))
    check(ValueError, "std", [good, torch.zeros(2)], [0.1])
    check(ValueError, r"std\[1\]", [good, torch.zeros(2)], [0.1, -1.0])
    check(TypeError, "std", [good], "0.1")
    check(TypeError, "std", [good], torch.tensor(1))
    check(ValueError, "std", [good], torch.tensor([0.1]))
    check(ValueError, "std", [good], torch.tensor(-0.1))
    check(ValueError, "std", [good], torch.tensor(float("nan")))
    # a tensor and a strided view of it share elements (get_overlap_status cannot tell: "too hard")
    w = torch.zeros(4, 3)
    check(ValueError, r"tensors\[0\] and tensors\[1\]", [w, w[:, 0]])
    check(ValueError, r"tensors\[0\] and tensors\[1\]", [w[:, ::2], w[1:, 2]])
    # interleaved strided views share no element: allowed
    run_on(backend, foreach_gaussian_noise_, [w[:, 0], w[:, 1], w[:, 2:]], 1.0)
    assert (w != 0).all()
    m = torch.zeros(4, 2)
    run_on(backend, foreach_gaussian_noise_, [m[:, 0], m[:, 1]], 1.0)
    assert (m != 0).all()


def test_version_counters_are_bumped():
    t = torch.zeros(4)
    v = t._version
    foreach_gaussian_noise_([t], 0.1)
    assert t._version > v


def test_parameters_and_grad_mode():
    p = torch.nn.Parameter(torch.zeros(10))
    foreach_gaussian_noise_([p], 0.1)  # like an optimizer step: no autograd history, no error on a leaf
    assert p.grad_fn is None and p.requires_grad and (p != 0).any()


def test_add_noise_is_a_deprecated_alias_of_foreach_gaussian_noise_():
    a, b = make([5, 300]), make([5, 300])
    with pytest.warns(DeprecationWarning, match="foreach_gaussian_noise_"):
        returned = noisefast.add_noise_(a, [0.5, 2.0], generator=gen(7))
    assert returned is a
    foreach_gaussian_noise_(b, [0.5, 2.0], generator=gen(7))
    for x, y in zip(a, b):
        assert torch.equal(x, y)


def test_compile_fullgraph_traces_the_public_function():
    def step(ts, std):
        foreach_gaussian_noise_(ts, std)
        foreach_gaussian_noise_(ts[1], 0.0)
        foreach_gaussian_noise_(ts[2:], [0.0, 1.0])
        return ts[0].sum() + ts[1].sum()

    compiled = torch.compile(step, fullgraph=True)
    ts = [torch.zeros(1000), torch.zeros(7, 3, dtype=torch.bfloat16), torch.zeros(5), torch.zeros(300)]
    compiled(ts, torch.tensor(1.0))
    assert 0.8 < ts[0].std().item() < 1.2 and (ts[1] != 0).float().mean() > 0.9
    assert torch.equal(ts[2], torch.ones(5) * ts[2]) and (ts[3] != 0).all()
    snapshot = [t.clone() for t in ts]
    compiled(ts, torch.tensor(0.0))
    assert torch.equal(ts[1], snapshot[1]) and torch.equal(ts[0], snapshot[0]) and torch.equal(ts[2], snapshot[2])
    assert not torch.equal(ts[3], snapshot[3])


def test_compile_fullgraph_out_of_place_gradient():
    def f(ws):
        a, b = foreach_gaussian_noise(ws, 0.1)
        return (a * 2).sum() + b.sum()

    ws = [torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)]
    torch.compile(f, fullgraph=True)(ws).backward()
    assert torch.equal(ws[0].grad, torch.full((5,), 2.0)) and torch.equal(ws[1].grad, torch.ones(3, 2))


def test_opcheck():
    seed = torch.tensor([7])
    ts = [torch.randn(4, 3), torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.bfloat16)]
    torch.library.opcheck(foreach_gaussian_noise_op_, (ts, seed, [0.5, 0.1, 2.0], None))
    torch.library.opcheck(foreach_gaussian_noise_op_, (ts, seed, [], torch.tensor(0.5)))
    ws = [torch.randn(4, 3, requires_grad=True), torch.randn(6, requires_grad=True)]
    torch.library.opcheck(foreach_gaussian_noise_op, (ws, seed, [0.5, 0.0], None))
    torch.library.opcheck(foreach_gaussian_noise_op, (ws, seed, [], torch.tensor(0.3, dtype=torch.float64)))


# --- CUDA (run when a GPU is present) ---------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES)
def test_cuda_matches_reference(dtype):
    # 200 tensors: several launches (more than one launch's capacity); sizes straddle the 65536-element chunks.
    sizes = [(k * 7919) % 70001 for k in range(200)] + [131073, 65536, 65537]
    ts = [t.cuda() for t in make(sizes, dtype)]
    ref = [t.cpu() for t in ts]
    stds = [0.1 + 0.01 * k for k in range(len(ts))]
    seed = torch.tensor([987654321])
    with noisefast.use_backend("cuda"):
        foreach_gaussian_noise_op_(ts, seed.cuda(), stds, None)
    with noisefast.use_backend("reference"):
        foreach_gaussian_noise_op_(ref, seed, stds, None)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype in (torch.float32, torch.float64) else one_rounding_tolerance(dtype)
    for k, (a, b) in enumerate(zip(ts, ref)):
        assert_close(a.cpu(), b, **tol, what=f"tensor {k} ({a.numel()} elements, {dtype})")


@pytest.mark.cuda
def test_cuda_views_device_std_copies_and_identity():
    base = torch.randn(40, 33, device="cuda")
    original = base.clone()
    view = base[3:37, 1::4]
    ts = [view, torch.randn(1001, device="cuda", dtype=torch.float16)[1:]]  # misaligned contiguous view
    ref = [t.cpu() for t in ts]
    std = torch.tensor(0.7, device="cuda")
    seed = torch.tensor([42])
    with noisefast.use_backend("cuda"):
        foreach_gaussian_noise_op_(ts, seed.cuda(), [], std)
        copies = foreach_gaussian_noise_op(ref_in := [t.clone() for t in ts], seed.cuda(), [0.0, 0.5], None)
    with noisefast.use_backend("reference"):
        foreach_gaussian_noise_op_(ref, seed, [0.7, 0.7], None)
    for a, b in zip(ts, ref):
        assert_close(a.cpu().double(), b.double(), rtol=1e-3, atol=1e-3)
    mask = torch.ones_like(base, dtype=torch.bool)
    mask[3:37, 1::4] = False
    assert torch.equal(base[mask], original[mask])
    assert torch.equal(copies[0], ref_in[0])
    x = torch.randn(4099, device="cuda")
    got = x.clone()
    foreach_gaussian_noise_(got, 0.3, generator=torch.Generator("cuda").manual_seed(1))
    want = gaussian_noise(x, 0.3, generator=torch.Generator("cuda").manual_seed(1))
    assert torch.equal(got, want)


@pytest.mark.cuda
def test_cuda_graph_capture_draws_new_noise_per_replay():
    ts = [torch.zeros(1000, device="cuda"), torch.zeros(77, device="cuda")]
    std = torch.tensor(1.0, device="cuda")
    foreach_gaussian_noise_(ts, std)  # warm up
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        foreach_gaussian_noise_(ts, std)
    for t in ts:
        t.zero_()
    graph.replay()
    first = ts[0].clone()
    ts[0].zero_()
    graph.replay()
    assert not torch.equal(first, ts[0]) and 0.8 < ts[0].std().item() < 1.2


@pytest.mark.parametrize("backend", BACKENDS)
def test_inference_tensors_outside_inference_mode_raise_before_writing(backend):
    """As torch's in-place ops do (before: the kernel wrote them)."""
    with torch.inference_mode():
        frozen = torch.zeros(3)
    plain = torch.zeros(3)
    with pytest.raises(RuntimeError, match=r"tensors\[1\] is an inference tensor"):
        run_on(backend, foreach_gaussian_noise_, [plain, frozen], 1.0)
    assert torch.equal(plain, torch.zeros(3)) and torch.equal(frozen, torch.zeros(3))
    with torch.inference_mode():
        run_on(backend, foreach_gaussian_noise_, [frozen], 1.0)
    assert not torch.equal(frozen, torch.zeros(3))


def test_meta_tensors_are_checked_like_the_kernels():
    """Meta tensors: the kernels' metadata checks run (before: any call returned silently)."""
    meta = torch.empty(3, device="meta")
    foreach_gaussian_noise_([meta], 1.0)
    assert foreach_gaussian_noise([meta], 1.0)[0].shape == (3,)
    with pytest.raises(TypeError, match=r"tensors\[1\]"):
        foreach_gaussian_noise_([meta, torch.empty(3, device="meta", dtype=torch.int64)], 1.0)
    with pytest.raises(ValueError, match=r"tensors\[0\] has elements that share memory"):
        foreach_gaussian_noise_([torch.empty(1, device="meta").expand(4)], 1.0)
    with pytest.raises(ValueError, match="std"):
        foreach_gaussian_noise_([meta], [1.0, 2.0])


@pytest.mark.parametrize("backend", BACKENDS + ["meta"])
def test_an_empty_expanded_tensor_has_no_shared_elements(backend):
    """Found by the property suite: the reference and the fake kernel called an empty expanded
    tensor (shape (2, 0), stride 0) self-overlapping, the C++ kernels (rightly) did not."""
    device = "meta" if backend == "meta" else "cpu"
    t = torch.empty(1, 0, device=device).expand(2, 0)
    run_on("cpu" if backend == "meta" else backend, foreach_gaussian_noise_, [t], 1.0)
    assert t.shape == (2, 0)
