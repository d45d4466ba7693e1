"""noisefast.pseudo_huber_loss: gradients, agreement with the reference on every backend, numerics,
layouts, NaN and empty inputs, registration (opcheck, torch.compile) and argument errors."""
import math

import pytest
import torch

from noisefast.ops.pseudo_huber import pseudo_huber_backward, pseudo_huber_forward, pseudo_huber_loss
from noisefast.reference import pseudo_huber as ref

from helpers import assert_close, assert_low_precision_rule, backend_params, run_on

BACKENDS = backend_params()
FORMS = [pytest.param(True, id="per_sample"), pytest.param(False, id="per_element")]


def _pair(shape, dtype=torch.float32, seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    b = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    return a.to(dtype), b.to(dtype)


def _loss_and_grads(fn, a, b, weight=None, **kwargs):
    """fn's loss ("none") and the gradients of sum(loss * r) for a fixed r, to input and target."""
    a = a.detach().clone().requires_grad_()
    b = b.detach().clone().requires_grad_()
    loss = fn(a, b, weight=weight, reduction="none", **kwargs)
    r = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grad_a, grad_b = torch.autograd.grad((loss * r).sum(), (a, b))
    return loss.detach(), grad_a, grad_b


def _exact(a, b, **kwargs):
    """The reference in float64 from the same (rounded) inputs."""
    loss, ga, gb = _loss_and_grads(ref.pseudo_huber_loss, a.double(), b.double(), **kwargs)
    return loss, ga, gb


# --- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("c", [None, 0.7], ids=["c_default", "c_0.7"])
def test_gradcheck_cpu(per_sample, reduction, weighted, c):
    a, b = _pair((3, 2, 5), torch.float64)
    a.requires_grad_()
    b.requires_grad_()
    inputs = (a, b)
    if weighted:
        inputs += (torch.rand(3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).requires_grad_(),)

    def fn(input, target, weight=None):
        return pseudo_huber_loss(input, target, c=c, weight=weight, reduction=reduction, per_sample=per_sample)

    assert run_on("cpu", torch.autograd.gradcheck, fn, inputs, eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.id != "cpu"])
@pytest.mark.parametrize("per_sample", FORMS)
def test_gradcheck_other_backends(backend, per_sample):
    a, b = _pair((2, 7), torch.float64, seed=3)
    w = torch.rand(2, dtype=torch.float64).requires_grad_()
    fn = lambda x, y, w: pseudo_huber_loss(x, y, c=0.3, weight=w, per_sample=per_sample)  # noqa: E731
    assert run_on(backend, torch.autograd.gradcheck, fn, (a.requires_grad_(), b.requires_grad_(), w),
                  eps=1e-6, atol=1e-7)


# --- agreement with the reference --------------------------------------------------------------

SHAPES = [
    pytest.param((7, 3, 11, 13), id="7x3x11x13"),      # D = 429, not a multiple of any block
    pytest.param((3, 5000), id="3x5000"),              # several Triton chunks per sample
    pytest.param((2, 40001), id="2x40001"),            # several CPU tasks per sample
    pytest.param((300, 3), id="300x3"),                # many narrow samples per Triton program
    pytest.param((1, 1), id="B1_D1"),
    pytest.param((5,), id="D1"),
    pytest.param((1, 777), id="B1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_reference(backend, per_sample, shape):
    a, b = _pair(shape, torch.float32, seed=len(shape))
    weight = torch.rand(shape[0], generator=torch.Generator().manual_seed(2))
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, weight=weight, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, weight=weight.double(), per_sample=per_sample)
    assert loss.dtype == torch.float32 and ga.dtype == torch.float32
    assert_close(loss, exact.float(), rtol=2e-6, atol=1e-7, what="loss")
    assert_close(ga, ea.float(), rtol=1e-5, atol=1e-8, what="grad input")
    assert_close(gb, eb.float(), rtol=1e-5, atol=1e-8, what="grad target")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reductions_match_reference(backend, per_sample, reduction):
    a, b = _pair((6, 2, 9), torch.float64, seed=5)
    weight = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    got = run_on(backend, pseudo_huber_loss, a, b, weight=weight, reduction=reduction, per_sample=per_sample)
    want = ref.pseudo_huber_loss(a, b, weight=weight, reduction=reduction, per_sample=per_sample)
    assert got.shape == () and got.dtype == torch.float64
    assert_close(got, want, rtol=1e-13, atol=0, what=reduction)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_fp64(backend, per_sample):
    a, b = _pair((4, 3, 37), torch.float64, seed=6)
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    assert_close(loss, exact, rtol=1e-13, atol=0, what="loss")
    assert_close(ga, ea, rtol=1e-12, atol=1e-300, what="grad input")
    assert_close(gb, eb, rtol=1e-12, atol=1e-300, what="grad target")


def _eager_low(a, b, *, c=None, weight=None, reduction="none", per_sample=True):
    """The naive formula evaluated entirely in a's dtype: what eager PyTorch code computes."""
    c = ref.default_c(math.prod(a.shape[1:])) if c is None else c
    e = (a - b).reshape(a.shape[0], -1)
    if per_sample:
        return torch.sqrt((e ** 2).sum(dim=1) + c ** 2) - c
    return (torch.sqrt(e ** 2 + c ** 2) - c).mean(dim=1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_rule(backend, per_sample, dtype):
    a, b = _pair((6, 3, 19, 23), dtype, seed=7)
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    eager, eager_a, eager_b = _loss_and_grads(_eager_low, a, b, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    assert loss.dtype == dtype and ga.dtype == dtype
    assert_low_precision_rule(loss, eager, exact, what=f"{dtype} loss")
    assert_low_precision_rule(ga, eager_a, ea, what=f"{dtype} grad input")
    assert_low_precision_rule(gb, eager_b, eb, what=f"{dtype} grad target")


# --- numerics --------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_small_differences_do_not_cancel(backend, per_sample):
    # s = ||e||^2 ~ 1e-12 << c^2 = 1: sqrt(s + c^2) - c is exactly 0 in float32, the true value 5e-13.
    a = torch.full((3, 4), 0.25)
    b = a + torch.tensor([[1e-6], [2e-6], [4e-7]])
    c = 1.0
    got = run_on(backend, pseudo_huber_loss, a, b, c=c, reduction="none", per_sample=per_sample)
    e = (a.double() - b.double()).reshape(3, -1)
    s = (e * e).sum(1) if per_sample else e * e
    exact = s / (torch.sqrt(s + c * c) + c)  # no cancellation in float64 either
    exact = exact if per_sample else exact.mean(1)
    naive = _eager_low(a, b, c=c, per_sample=per_sample)
    assert (naive == 0).all()  # the trap the stable form avoids
    assert_close(got, exact.float(), rtol=1e-6, atol=0, what="small s")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_fp16_large_differences_do_not_overflow(backend, per_sample):
    # e = 6e4 - (-2e3) = 6.2e4 in one element: e^2 = 3.8e9 overflows float16 (max 65504), not float32.
    a = torch.zeros(2, 8, dtype=torch.float16)
    b = torch.zeros(2, 8, dtype=torch.float16)
    a[0, 3], b[0, 3] = 6.0e4, -2.0e3
    a[1, 5] = -3.0e4
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    assert torch.isfinite(loss).all() and torch.isfinite(ga).all()
    assert_close(loss.double(), exact, rtol=1e-3, atol=0, what="loss")
    assert_close(ga.double(), ea, rtol=1e-3, atol=1e-6, what="grad")
    assert torch.isinf(_eager_low(a, b, per_sample=per_sample)[0])  # eager float16 overflows


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_c_and_zero_c(backend):
    # D = 3*32*32: c = 0.00054 * sqrt(3072) = 0.029929... (iCT)
    a = torch.zeros(2, 3, 32, 32, dtype=torch.float64)
    b = torch.zeros_like(a)
    a[0, 0, 0, 0] = 0.1
    got = run_on(backend, pseudo_huber_loss, a, b, reduction="none")
    c = 0.00054 * math.sqrt(3072)
    assert abs(c - 0.02993) < 1e-5
    assert_close(got, torch.tensor([math.sqrt(0.01 + c * c) - c, 0.0], dtype=torch.float64), rtol=1e-12, atol=0)
    # c = 0: the L2 norm per sample, the mean |e| per element; gradient 0 (not NaN) where e = 0.
    a = a.requires_grad_()
    for per_sample, want in ((True, [0.1, 0.0]), (False, [0.1 / 3072, 0.0])):
        loss = run_on(backend, pseudo_huber_loss, a, b, c=0.0, reduction="none", per_sample=per_sample)
        assert_close(loss.detach(), torch.tensor(want, dtype=torch.float64), rtol=1e-12, atol=0)
        (grad,) = torch.autograd.grad(loss.sum(), a)
        expected = torch.zeros_like(a)
        expected[0, 0, 0, 0] = 1.0 if per_sample else 1.0 / 3072
        assert_close(grad, expected, rtol=1e-12, atol=0, what=f"c=0 per_sample={per_sample}")


# --- layouts, NaN, empty --------------------------------------------------------------------

def _layouts():
    base_a, base_b = _pair((4, 6, 5, 7), torch.float32, seed=9)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    return {
        "channels_last": (cl(base_a), cl(base_b)),
        "mixed_layouts": (cl(base_a), base_b),
        "transposed": (base_a.transpose(1, 3), base_b.transpose(1, 3)),
        "sliced": (_pair((4, 6, 5, 14), seed=10)[0][..., ::2], _pair((4, 6, 5, 14), seed=11)[1][..., ::2]),
        "batch_strided": (_pair((8, 6, 5, 7), seed=12)[0][::2], base_b),
        "expanded_target": (base_a, torch.randn(1, 6, 5, 7).expand(4, 6, 5, 7)),
    }


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("layout", list(_layouts()))
def test_any_layout(backend, per_sample, layout):
    a, b = _layouts()[layout]
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    assert_close(loss, exact.float(), rtol=2e-6, atol=1e-7, what="loss")
    assert_close(ga, ea.float(), rtol=1e-5, atol=1e-8, what="grad input")
    assert_close(gb, eb.float(), rtol=1e-5, atol=1e-8, what="grad target")


@pytest.mark.parametrize("backend", BACKENDS)
def test_channels_last_needs_no_copy(backend):
    a, b = _layouts()["channels_last"]
    a = a.requires_grad_()
    loss = run_on(backend, pseudo_huber_loss, a, b)
    (grad,) = torch.autograd.grad(loss, a)
    if backend != "reference":  # the kernels write the gradient in input's own layout
        assert grad.stride() == a.stride()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_nan_stays_in_its_sample(backend, per_sample):
    a, b = _pair((4, 300), torch.float32, seed=13)
    a[2, 17] = float("nan")
    loss, ga, gb = run_on(backend, _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    assert torch.isnan(loss[2]) and torch.isfinite(loss[[0, 1, 3]]).all()
    assert torch.isnan(ga[2, 17]) and torch.isfinite(ga[[0, 1, 3]]).all()
    exact, ea, _ = _exact(a, b, per_sample=per_sample)
    assert_close(loss[[0, 1, 3]], exact[[0, 1, 3]].float(), rtol=2e-6, atol=1e-7)
    assert_close(ga[[0, 1, 3]], ea[[0, 1, 3]].float(), rtol=1e-5, atol=1e-8)
    mean = run_on(backend, pseudo_huber_loss, a, b, per_sample=per_sample)
    assert torch.isnan(mean)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_inf_difference_gives_inf_loss(backend, per_sample):
    a, b = _pair((3, 10), torch.float32, seed=14)
    a[1, 4] = float("inf")
    loss = run_on(backend, pseudo_huber_loss, a, b, reduction="none", per_sample=per_sample)
    assert torch.isinf(loss[1]) and loss[1] > 0 and torch.isfinite(loss[[0, 2]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("per_sample", FORMS)
def test_empty_batch(backend, per_sample):
    a = torch.zeros(0, 3, 4, requires_grad=True)
    b = torch.zeros(0, 3, 4)
    none = run_on(backend, pseudo_huber_loss, a, b, reduction="none", per_sample=per_sample)
    assert none.shape == (0,)
    total = run_on(backend, pseudo_huber_loss, a, b, reduction="sum", per_sample=per_sample)
    assert total.item() == 0.0
    mean = run_on(backend, pseudo_huber_loss, a, b, per_sample=per_sample)
    assert torch.isnan(mean)  # as torch.mean of nothing
    (grad,) = torch.autograd.grad(total, a)
    assert grad.shape == a.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_samples_without_elements(backend):
    a = torch.zeros(3, 0, requires_grad=True)
    b = torch.zeros(3, 0)
    per_sample = run_on(backend, pseudo_huber_loss, a, b, reduction="none")
    assert torch.equal(per_sample, torch.zeros(3))  # the norm of nothing
    per_element = run_on(backend, pseudo_huber_loss, a, b, reduction="none", per_sample=False)
    assert torch.isnan(per_element).all()  # the mean of nothing
    (grad,) = torch.autograd.grad(per_sample.sum(), a)
    assert grad.shape == (3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_only_target_requires_grad(backend):
    a, b = _pair((3, 20), torch.float64, seed=15)
    b.requires_grad_()
    loss = run_on(backend, pseudo_huber_loss, a, b, c=0.2)
    (grad,) = torch.autograd.grad(loss, b)
    a2 = a.clone().requires_grad_()
    (grad_a,) = torch.autograd.grad(ref.pseudo_huber_loss(a2, b.detach(), c=0.2), a2)
    assert_close(grad, -grad_a, rtol=1e-12, atol=0)


def test_mixed_dtypes_promote():
    a, b = _pair((3, 50), torch.float32, seed=16)
    got = pseudo_huber_loss(a, b.bfloat16(), reduction="none")
    assert got.dtype == torch.float32
    assert_close(got, pseudo_huber_loss(a, b.bfloat16().float(), reduction="none"), rtol=0, atol=0)


def test_weight_shapes():
    a, b = _pair((4, 3, 2, 2), torch.float64, seed=17)
    w = torch.rand(4, dtype=torch.float64)
    flat = pseudo_huber_loss(a, b, weight=w)
    assert_close(pseudo_huber_loss(a, b, weight=w.view(4, 1, 1, 1)), flat, rtol=0, atol=0)
    assert_close(flat, (pseudo_huber_loss(a, b, reduction="none") * w).mean(), rtol=1e-15, atol=0)


# --- registration --------------------------------------------------------------------------

@pytest.mark.parametrize("per_sample", FORMS)
def test_opcheck(per_sample):
    a, b = _pair((3, 4, 5), torch.float32, seed=18)
    torch.library.opcheck(pseudo_huber_forward, (a.requires_grad_(), b.requires_grad_(), 0.1, per_sample))
    loss = pseudo_huber_forward(a.detach(), b, 0.1, per_sample)
    # The backward op has no derivative of its own (no double backward): schema and fake only.
    torch.library.opcheck(pseudo_huber_backward, (torch.rand(3), a.detach(), b.detach(), loss, 0.1, per_sample,
                                                  True, True), test_utils=("test_schema", "test_faketensor"))
    # Permuted inside each sample (no copy) and permuted across samples (copied): fake and real agree.
    torch.library.opcheck(pseudo_huber_forward, (a.detach().transpose(1, 2), b.detach().transpose(1, 2), 0.1,
                                                 per_sample))
    torch.library.opcheck(pseudo_huber_forward, (a.detach().transpose(0, 2), b.detach().transpose(0, 2), 0.1,
                                                 per_sample))
    torch.library.opcheck(pseudo_huber_backward, (torch.rand(4), a.detach().transpose(0, 1), b.detach().transpose(0, 1),
                                                  torch.rand(4), 0.1, per_sample, True, False),
                          test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    a, b = _pair((4, 3, 8, 8), torch.float32, seed=19)
    w = torch.rand(4)

    def step(x, y, w):
        return pseudo_huber_loss(x, y, weight=w) + pseudo_huber_loss(x, y, per_sample=False, reduction="sum")

    compiled = torch.compile(step, fullgraph=True, backend="inductor")
    x1 = a.clone().requires_grad_()
    x2 = a.clone().requires_grad_()
    got = compiled(x1, b, w)
    want = step(x2, b, w)
    assert_close(got.detach(), want.detach(), rtol=1e-6, atol=0)
    (g1,) = torch.autograd.grad(got, x1)
    (g2,) = torch.autograd.grad(want, x2)
    assert_close(g1, g2, rtol=1e-6, atol=0)


# --- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, name", [
    (dict(target=torch.zeros(3, 5)), ValueError, "target"),
    (dict(target=torch.zeros(3, 4, dtype=torch.int64)), TypeError, "target"),
    (dict(input=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "input"),
    (dict(input=torch.tensor(1.0), target=torch.tensor(2.0)), ValueError, "input"),
    (dict(weight=torch.ones(4)), ValueError, "weight"),
    (dict(weight=torch.ones(3, 2)), ValueError, "weight"),
    (dict(weight=[1.0, 1.0, 1.0]), TypeError, "weight"),
    (dict(weight=torch.ones(3, dtype=torch.int64)), TypeError, "weight"),
    # issue #13 item 9: NaN and negative weights were accepted
    (dict(weight=torch.tensor([1.0, float("nan"), 1.0])), ValueError, "weight"),
    (dict(weight=torch.tensor([1.0, -0.5, 1.0])), ValueError, "weight"),
    (dict(weight=torch.tensor([1.0, float("inf"), 1.0])), ValueError, "weight"),
    (dict(c=-0.1), ValueError, "c"),
    (dict(c=float("nan")), ValueError, "c"),
    (dict(c="big"), TypeError, "c"),
    (dict(reduction="avg"), ValueError, "reduction"),
    (dict(per_sample=1), TypeError, "per_sample"),
])
def test_bad_arguments(kwargs, error, name):
    args = dict(input=torch.zeros(3, 4), target=torch.zeros(3, 4))
    args.update(kwargs)
    input, target = args.pop("input"), args.pop("target")
    with pytest.raises(error, match=name):
        pseudo_huber_loss(input, target, **args)


@pytest.mark.triton
@pytest.mark.parametrize("per_sample", FORMS)
def test_triton_long_programs(monkeypatch, per_sample):
    # Fewer target programs than the GPU default, so a small input already takes the long-sample
    # path: several iterations per program (ITERS = 16) and several chunks per sample (P = 2).
    import noisefast.triton.tiling as tiling

    monkeypatch.setattr(tiling, "TARGET_PROGRAMS", 4)
    assert tiling.sample_tiling(2, 20000) == (1, 1024, 16, 2)
    a, b = _pair((2, 20000), torch.float32, seed=20)
    loss, ga, gb = run_on("triton", _loss_and_grads, pseudo_huber_loss, a, b, per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    assert_close(loss, exact.float(), rtol=2e-6, atol=1e-7, what="loss")
    assert_close(ga, ea.float(), rtol=1e-5, atol=1e-8, what="grad input")


@pytest.mark.cuda
@pytest.mark.parametrize("per_sample", FORMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (3, 1_000_003), (100_000, 3), (1, 1)],
                         ids=["cifar", "long", "narrow", "B1_D1"])
def test_cuda_matches_reference(per_sample, dtype, shape):
    a, b = _pair(shape, dtype, seed=21)
    loss, ga, gb = _loss_and_grads(pseudo_huber_loss, a.cuda(), b.cuda(), per_sample=per_sample)
    exact, ea, eb = _exact(a, b, per_sample=per_sample)
    if dtype == torch.bfloat16:
        eager, eager_a, eager_b = _loss_and_grads(_eager_low, a, b, per_sample=per_sample)
        assert_low_precision_rule(loss.cpu(), eager, exact, what="bf16 loss")
        assert_low_precision_rule(ga.cpu(), eager_a, ea, what="bf16 grad input")
        assert_low_precision_rule(gb.cpu(), eager_b, eb, what="bf16 grad target")
        return
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert_close(loss.cpu(), exact.to(dtype), rtol=rtol, atol=0, what="loss")
    assert_close(ga.cpu(), ea.to(dtype), rtol=rtol * 10, atol=1e-10, what="grad input")
    assert_close(gb.cpu(), eb.to(dtype), rtol=rtol * 10, atol=1e-10, what="grad target")
