"""noisefast.consistency_output and consistency_scalings: the boundary condition f(x, sigma_min) = x
bit for bit, gradients (raw, x, sigma), agreement with the reference on every backend, layouts,
NaN and empty inputs, registration and argument errors."""
import math

import pytest
import torch

from noisefast.ops.consistency_output import (consistency_output, consistency_output_backward_op,
                                              consistency_output_forward_op, consistency_scalings)
from noisefast.reference import consistency_output as ref

from helpers import ALL_FLOAT_DTYPES, assert_close, assert_low_precision_rule, backend_params, run_on

BACKENDS = backend_params()
SIGMA_MIN, SIGMA_DATA = 0.002, 0.5


def _data(shape, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3).to(dtype)
    sigma = torch.exp(torch.randn(shape[0], generator=gen, dtype=torch.float64) * 2 - 1)
    return raw, x, sigma


def _out_and_grads(fn, raw, x, sigma, **kwargs):
    """fn's output and the gradients of sum(out * r), r fixed, to raw, x and sigma."""
    raw = raw.detach().clone().requires_grad_()
    x = x.detach().clone().requires_grad_()
    sigma = sigma.detach().clone().requires_grad_()
    out = fn(raw, x, sigma, **kwargs)
    r = torch.linspace(-1, 2, out.numel(), dtype=torch.float64).reshape(out.shape).to(out.dtype)
    return (out.detach(),) + torch.autograd.grad((out * r).sum(), (raw, x, sigma))


def _exact(raw, x, sigma, **kwargs):
    return _out_and_grads(ref.consistency_output, raw.double(), x.double(), sigma.double(), **kwargs)


def _eager_low(raw, x, sigma):
    """What eager code computes: the scalings and the blend in the data's dtype."""
    c_skip, c_out, _ = ref.consistency_scalings(sigma, SIGMA_DATA, SIGMA_MIN)
    shape = (-1,) + (1,) * (raw.dim() - 1)
    return c_skip.view(shape) * x + c_out.view(shape) * raw


# --- the boundary condition ------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES, ids=lambda d: str(d).replace("torch.", ""))
@pytest.mark.parametrize("sigma_kind", ["number", "tensor_1", "tensor_B", "tensor_B_math_dtype"])
def test_identity_at_sigma_min_bit_exact(backend, dtype, sigma_kind):
    raw, x, _ = _data((3, 4, 5, 7), dtype, seed=1)
    x = x + 0.0  # no negative zeros: 1 * x + 0 * raw is +0 for x = -0
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    sigma = {"number": SIGMA_MIN,
             "tensor_1": torch.tensor([SIGMA_MIN], dtype=torch.float64),
             "tensor_B": torch.full((3,), SIGMA_MIN, dtype=torch.float64),
             "tensor_B_math_dtype": torch.full((3,), SIGMA_MIN, dtype=math_dtype)}[sigma_kind]
    out = run_on(backend, consistency_output, raw, x, sigma)
    assert out.dtype == dtype
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[x.element_size()]
    assert torch.equal(out.view(bits), x.view(bits))
    # and the gradients there: all to x, none to raw
    raw_g = raw.clone().requires_grad_()
    x_g = x.clone().requires_grad_()
    grad = torch.randn(x.shape, dtype=torch.float64).to(dtype)
    out = run_on(backend, consistency_output, raw_g, x_g, sigma)
    g_raw, g_x = torch.autograd.grad(out, (raw_g, x_g), grad)
    assert torch.equal(g_x.view(bits), grad.view(bits)) and (g_raw == 0).all()


# --- gradients -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_shape", ["B", "1", "number"])
def test_gradcheck(backend, sigma_shape):
    raw, x, sigma = _data((3, 2, 5), torch.float64, seed=2)
    raw.requires_grad_()
    x.requires_grad_()
    if sigma_shape == "number":
        fn = lambda r, y: consistency_output(r, y, 1.7, sigma_data=0.6, sigma_min=0.01)  # noqa: E731
        inputs = (raw, x)
    else:
        s = (sigma if sigma_shape == "B" else sigma[:1]).requires_grad_()
        fn = lambda r, y, s: consistency_output(r, y, s, sigma_data=0.6, sigma_min=0.01)  # noqa: E731
        inputs = (raw, x, s)
    assert run_on(backend, torch.autograd.gradcheck, fn, inputs, eps=1e-6, atol=1e-8)


# --- agreement with the reference --------------------------------------------------------------

SHAPES = [
    pytest.param((7, 3, 11, 13), id="7x3x11x13"),
    pytest.param((3, 5000), id="3x5000"),
    pytest.param((2, 40001), id="2x40001"),
    pytest.param((300, 3), id="300x3"),
    pytest.param((1, 1), id="B1_D1"),
    pytest.param((5,), id="D1"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_fp32_matches_reference(backend, shape):
    raw, x, sigma = _data(shape, torch.float32, seed=3)
    sigma = sigma.float()
    out, g_raw, g_x, g_sigma = run_on(backend, _out_and_grads, consistency_output, raw, x, sigma)
    e_out, e_raw, e_x, e_sigma = _exact(raw, x, sigma)
    assert_close(out, e_out.float(), rtol=2e-6, atol=1e-6, what="out")  # |c_skip x| ~ 3: atol ~ 4 ulp
    assert_close(g_raw, e_raw.float(), rtol=2e-6, atol=1e-7, what="grad raw")
    assert_close(g_x, e_x.float(), rtol=2e-6, atol=1e-7, what="grad x")
    assert_close(g_sigma, e_sigma.float(), rtol=2e-5, atol=1e-4, what="grad sigma")


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp64_and_one_shared_sigma(backend):
    raw, x, _ = _data((4, 3, 37), torch.float64, seed=4)
    sigma = torch.tensor([3.3], dtype=torch.float64)
    got = run_on(backend, _out_and_grads, consistency_output, raw, x, sigma, sigma_data=0.7, sigma_min=0.05)
    want = _exact(raw, x, sigma, sigma_data=0.7, sigma_min=0.05)
    assert got[3].shape == (1,)
    for g, w, what in zip(got, want, ("out", "grad raw", "grad x", "grad sigma")):
        assert_close(g, w, rtol=1e-13, atol=1e-14, what=what)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("raw_dtype, x_dtype", [(torch.float16, torch.float32), (torch.float32, torch.bfloat16),
                                                (torch.bfloat16, torch.float64)], ids=["fp16-fp32", "fp32-bf16", "bf16-fp64"])
def test_mixed_dtypes_give_the_promoted_dtype(backend, raw_dtype, x_dtype):
    """The result's dtype is torch.promote_types(raw, x), as documented, and the reference says the
    same (issue #13 item 11: the docstrings said raw's dtype, and the reference returned it)."""
    raw, x, sigma = _data((3, 2, 5), torch.float64, seed=6)
    raw, x = raw.to(raw_dtype), x.to(x_dtype)
    common = torch.promote_types(raw_dtype, x_dtype)
    out = run_on(backend, consistency_output, raw, x, sigma)
    want = ref.consistency_output(raw, x, sigma)
    assert out.dtype == want.dtype == common
    assert torch.equal(out, run_on(backend, consistency_output, raw.to(common), x.to(common), sigma))
    assert_close(out.double(), want.double(), rtol=1e-6 if common != torch.bfloat16 else 1e-2, atol=1e-6,
                 what="out")
    assert "promote" in consistency_output.__doc__.split("Returns:")[1]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_low_precision_rule(backend, dtype):
    raw, x, sigma = _data((6, 3, 19, 23), dtype, seed=5)
    sigma = sigma.to(dtype)
    got = run_on(backend, _out_and_grads, consistency_output, raw, x, sigma)
    low = _out_and_grads(_eager_low, raw, x, sigma)
    exact = _exact(raw, x, sigma)
    assert got[0].dtype == dtype
    for g, e, w, what in zip(got, low, exact, ("out", "grad raw", "grad x", "grad sigma")):
        assert_low_precision_rule(g, e, w, what=f"{dtype} {what}")


def test_scalings_values():
    # sigma = sigma_min: (1, 0, 1/sqrt(sigma_min^2 + sd^2)); sigma = 80 and sigma = 1 by hand.
    c_skip, c_out, c_in = consistency_scalings(SIGMA_MIN)
    assert (c_skip, c_out) == (1.0, 0.0) and c_in == pytest.approx(1 / math.sqrt(SIGMA_MIN ** 2 + 0.25), rel=1e-15)
    c_skip, c_out, c_in = consistency_scalings(80.0)
    assert c_skip == pytest.approx(0.25 / (79.998 ** 2 + 0.25), rel=1e-15)
    assert c_out == pytest.approx(0.5 * 79.998 / math.sqrt(6400.25), rel=1e-15)
    assert c_in == pytest.approx(1 / math.sqrt(6400.25), rel=1e-15)
    assert consistency_scalings(1.0, sigma_data=1.0, sigma_min=0.0) == pytest.approx(
        (0.5, 1 / math.sqrt(2), 1 / math.sqrt(2)), rel=1e-15)
    sigma = torch.tensor([0.002, 1.0, 80.0], dtype=torch.float64, requires_grad=True)
    tensors = consistency_scalings(sigma)
    for k, value in enumerate((0.002, 1.0, 80.0)):
        assert [t[k].item() for t in tensors] == pytest.approx(list(consistency_scalings(value)), rel=1e-15)
    torch.autograd.gradcheck(lambda s: consistency_scalings(s), (sigma,))
    # the derivative formulas the kernels use match autograd's
    d_skip, d_out = ref.consistency_scalings_grad(sigma.detach(), SIGMA_DATA, SIGMA_MIN)
    a_skip = torch.autograd.grad(tensors[0].sum(), sigma, retain_graph=True)[0]
    a_out = torch.autograd.grad(tensors[1].sum(), sigma)[0]
    assert_close(d_skip, a_skip, rtol=1e-11, atol=1e-300)
    assert_close(d_out, a_out, rtol=1e-11, atol=1e-300)


# --- layouts, sigma shapes, NaN, empty ---------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout", ["channels_last", "mixed", "transposed", "sliced", "expanded_x"])
def test_any_layout(backend, layout):
    raw, x, sigma = _data((4, 6, 5, 7), torch.float32, seed=6)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    raw, x = {"channels_last": (cl(raw), cl(x)), "mixed": (cl(raw), x),
              "transposed": (raw.transpose(1, 3), x.transpose(1, 3)),
              "sliced": (torch.cat([raw, raw], 3)[..., ::2], torch.cat([x, x], 3)[..., 1::2]),
              "expanded_x": (raw, x[:1].expand(4, 6, 5, 7))}[layout]
    got = run_on(backend, _out_and_grads, consistency_output, raw, x, sigma.float())
    want = _exact(raw, x, sigma.float())
    for g, w, what in zip(got, want, ("out", "grad raw", "grad x", "grad sigma")):
        assert_close(g, w.float(), rtol=2e-5, atol=1e-5, what=what)
    if layout == "channels_last" and backend != "reference":
        assert got[0].stride() == raw.stride()  # written in raw's layout, no copy


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigma_forms_agree(backend):
    raw, x, _ = _data((3, 2, 4), torch.float64, seed=7)
    want = run_on(backend, consistency_output, raw, x, torch.full((3,), 0.8, dtype=torch.float64))
    f64 = dict(dtype=torch.float64)
    for sigma in (0.8, torch.tensor(0.8, **f64), torch.tensor([0.8], **f64), torch.full((3, 1, 1), 0.8, **f64),
                  torch.full((1, 1, 1), 0.8, dtype=torch.float64)):
        assert_close(run_on(backend, consistency_output, raw, x, sigma), want, rtol=1e-15, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_stays_in_its_sample(backend):
    raw, x, sigma = _data((4, 50), torch.float32, seed=8)
    raw[1, 7] = float("nan")
    out = run_on(backend, consistency_output, raw, x, sigma.float())
    assert torch.isnan(out[1, 7]) and torch.isnan(out).sum() == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    for shape, sigma in (((0, 3, 4), torch.zeros(0)), ((2, 0), torch.ones(2))):
        raw = torch.zeros(shape, requires_grad=True)
        x = torch.zeros(shape, requires_grad=True)
        s = sigma.clone().requires_grad_()
        out = run_on(backend, consistency_output, raw, x, s)
        assert out.shape == shape
        g_raw, g_x, g_s = torch.autograd.grad(out.sum(), (raw, x, s))
        assert g_raw.shape == shape and g_x.shape == shape and torch.equal(g_s, torch.zeros_like(s))


# --- registration ------------------------------------------------------------------------

def test_opcheck():
    raw, x, sigma = _data((3, 4, 5), torch.float32, seed=9)
    for s in (sigma.float(), sigma[:1].float()):
        torch.library.opcheck(consistency_output_forward_op, (raw.requires_grad_(), x.requires_grad_(),
                                                      s.requires_grad_(), SIGMA_DATA, SIGMA_MIN))
    # raw permuted inside its samples (kept as is), x contiguous (copied to raw's layout).
    torch.library.opcheck(consistency_output_forward_op, (raw.detach().transpose(1, 2), x.detach().transpose(1, 2).contiguous(),
                                                  sigma.float(), SIGMA_DATA, SIGMA_MIN))
    # The backward op has no derivative of its own (no double backward): schema and fake only.
    torch.library.opcheck(consistency_output_backward_op,
                          (torch.randn(3, 4, 5), raw.detach(), x.detach(), sigma.float(), SIGMA_DATA, SIGMA_MIN,
                           True, True, True), test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    raw, x, sigma = _data((4, 3, 8, 8), torch.float32, seed=10)

    def f(raw, x, sigma):
        return consistency_output(raw, x, sigma) * 2 + consistency_output(raw, x, 0.5)

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    got = _out_and_grads(compiled, raw, x, sigma.float())
    want = _out_and_grads(f, raw, x, sigma.float())
    for g, w in zip(got, want):
        assert_close(g, w, rtol=1e-6, atol=1e-6)


def test_scalings_of_a_tensor_sigma_compile_without_a_graph_break():
    """Its value check reads sigma on the host, which torch.compile skips (fullgraph would fail)."""
    sigma = torch.tensor([0.002, 0.5, 80.0])
    compiled = torch.compile(lambda s: consistency_scalings(s)[2] * 2, fullgraph=True, backend="eager")
    assert torch.equal(compiled(sigma), consistency_scalings(sigma)[2] * 2)


# --- errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, name", [
    (dict(x=torch.zeros(3, 5)), ValueError, "x"),
    (dict(x=torch.zeros(3, 4, dtype=torch.int64)), TypeError, "x"),
    (dict(raw=torch.zeros(3, 4, dtype=torch.int32)), TypeError, "raw"),
    (dict(raw=torch.tensor(1.0), x=torch.tensor(1.0)), ValueError, "raw"),
    (dict(sigma=torch.ones(4)), ValueError, "sigma"),
    (dict(sigma=torch.ones(3, 2)), ValueError, "sigma"),
    (dict(sigma=torch.ones(3, dtype=torch.int64)), TypeError, "sigma"),
    (dict(sigma=-1.0), ValueError, "sigma"),
    (dict(sigma=float("inf")), ValueError, "sigma"),
    (dict(sigma=torch.tensor([1.0, -1.0, 2.0])), ValueError, "sigma"),
    (dict(sigma=torch.tensor([1.0, float("nan"), 2.0])), ValueError, "sigma"),
    (dict(sigma="1"), TypeError, "sigma"),
    (dict(sigma_data=0.0), ValueError, "sigma_data"),
    (dict(sigma_min=-0.1), ValueError, "sigma_min"),
])
def test_bad_arguments(kwargs, error, name):
    args = dict(raw=torch.zeros(3, 4), x=torch.zeros(3, 4), sigma=torch.ones(3))
    args.update(kwargs)
    raw, x, sigma = args.pop("raw"), args.pop("x"), args.pop("sigma")
    with pytest.raises(error, match=name):
        consistency_output(raw, x, sigma, **args)


@pytest.mark.parametrize("sigma", [-1.0, float("nan"), float("inf"), torch.tensor([1.0, -1.0]),
                                   torch.tensor(float("nan"), dtype=torch.float64)],
                         ids=["negative", "nan", "inf", "tensor-negative", "tensor-nan"])
def test_scalings_reject_the_sigmas_the_output_rejects(sigma):
    """issue #13 item 9: consistency_scalings(-1.0) returned values, consistency_output raised."""
    with pytest.raises(ValueError, match="sigma"):
        consistency_scalings(sigma)
    with pytest.raises(ValueError, match="sigma"):
        consistency_output(torch.zeros(2, 3), torch.zeros(2, 3), sigma if not isinstance(sigma, torch.Tensor)
                           else sigma.expand(2) if sigma.dim() == 0 else sigma)


@pytest.mark.triton
def test_triton_long_programs(monkeypatch):
    # Fewer target programs than the GPU default: several iterations and chunks per sample.
    import noisefast.triton.tiling as tiling

    monkeypatch.setattr(tiling, "TARGET_PROGRAMS", 4)
    raw, x, sigma = _data((2, 20000), torch.float32, seed=11)
    got = run_on("triton", _out_and_grads, consistency_output, raw, x, sigma.float())
    want = _exact(raw, x, sigma.float())
    for g, w, what in zip(got, want, ("out", "grad raw", "grad x", "grad sigma")):
        assert_close(g, w.float(), rtol=2e-5, atol=1e-5, what=what)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=["fp32", "bf16", "fp64"])
@pytest.mark.parametrize("shape", [(64, 3, 32, 32), (3, 1_000_003), (100_000, 3)], ids=["cifar", "long", "narrow"])
def test_cuda_matches_reference(dtype, shape):
    raw, x, sigma = _data(shape, dtype, seed=12)
    got = _out_and_grads(consistency_output, raw.cuda(), x.cuda(), sigma.to(dtype).cuda())
    exact = _exact(raw, x, sigma.to(dtype))
    if dtype == torch.bfloat16:
        low = _out_and_grads(_eager_low, raw, x, sigma.to(dtype))
        for g, e, w in zip(got, low, exact):
            assert_low_precision_rule(g.cpu(), e, w, what="bf16")
        return
    rtol = 1e-12 if dtype == torch.float64 else 2e-5
    for g, w in zip(got, exact):
        assert_close(g.cpu(), w.to(dtype), rtol=rtol, atol=rtol * 10, what=str(dtype))
    x_exact = x + 0.0
    out = consistency_output(raw.cuda(), x_exact.cuda(), SIGMA_MIN)
    assert torch.equal(out.cpu(), x_exact)


def _identity_at_sigma_min(device, sigma_data):
    raw, x, _ = _data((5, 3, 37), torch.float32, seed=4)
    x = (x + 0.0).to(device)  # no negative zeros
    out = consistency_output(raw.to(device), x, 0.002, sigma_data=sigma_data, sigma_min=0.002)
    assert torch.equal(out, x), f"sigma_data={sigma_data}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("sigma_data", [0.3, 0.7, 1.3])
def test_identity_at_sigma_min_for_any_sigma_data(backend, sigma_data):
    """c_skip(sigma_min) = sd^2 / sd^2 must be exactly 1 whatever sd^2 is (0.5 squares to a power of
    two, where even an approximate division is exact; compiled Triton divided approximately)."""
    run_on(backend, _identity_at_sigma_min, "cpu", sigma_data)


@pytest.mark.cuda
@pytest.mark.parametrize("sigma_data", [0.3, 0.7, 1.3])
def test_cuda_identity_at_sigma_min_for_any_sigma_data(sigma_data):
    _identity_at_sigma_min("cuda", sigma_data)
