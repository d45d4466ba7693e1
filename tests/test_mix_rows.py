"""noisefast's mix_rows op, mixup's fused pass: exactness against the formula and the reference on
every backend, dtypes, layouts, empty inputs, autograd (gradcheck, the scatter-by-index gradient),
registration (opcheck, torch.compile) and argument errors."""
import pytest
import torch

import noisefast
from noisefast.ops.mix_rows import mix_rows, mix_rows_op
from noisefast.reference import mix_rows as ref

from helpers import LOW_PRECISION, assert_close, assert_low_precision_rule, backend_params, exact_mix, run_on

SHAPES = [(1,), (1, 5), (7, 3), (5, 3, 7), (3, 1025), (37, 3), (6, 2, 3, 5)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES)
def test_mix_rows_fp32_matches_formula(backend, shape):
    g = torch.Generator().manual_seed(len(shape))
    x = torch.randn(shape, generator=g)
    index = torch.randperm(shape[0], generator=g)
    lam = 0.3141
    out = run_on(backend, mix_rows, x, index, lam)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert_close(out, exact_mix(x, index, lam).float(), rtol=1e-6, atol=1e-6, what=backend)


@pytest.mark.parametrize("backend", backend_params())
def test_mix_rows_backends_agree_with_reference(backend):
    x = torch.randn(19, 131)
    index = torch.randint(0, 19, (19,))  # any index, not only a permutation
    lam = torch.tensor(0.77, dtype=torch.float64)
    expected = ref.mix_rows(x, index, lam)
    assert_close(run_on(backend, mix_rows, x, index, lam), expected, rtol=2e-7, atol=2e-7, what=backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_mix_rows_low_precision(backend, dtype):
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(33, 67, generator=g) * 4).to(dtype)
    index = torch.randperm(33, generator=g)
    lam = 0.6180339887
    out = run_on(backend, mix_rows, x, index, lam)
    assert out.dtype == dtype
    eager_low = ref.mixup_inputs(x, index, lam)  # the same blend done in dtype by eager PyTorch
    assert_low_precision_rule(out, eager_low, exact_mix(x, index, lam), what=f"{backend} {dtype}")


@pytest.mark.parametrize("backend", backend_params())
def test_mix_rows_float64(backend):
    x = torch.randn(9, 13, dtype=torch.float64)
    index = torch.randperm(9)
    lam = 0.123456789012345
    out = run_on(backend, mix_rows, x, index, lam)
    assert out.dtype == torch.float64
    assert_close(out, exact_mix(x, index, lam), rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize("backend", backend_params())
def test_mix_rows_endpoints_are_exact(backend):
    x = torch.randn(6, 11)
    index = torch.randperm(6)
    assert torch.equal(run_on(backend, mix_rows, x, index, 1.0), x)
    assert torch.equal(run_on(backend, mix_rows, x, index, 0.0), x[index])


@pytest.mark.parametrize("backend", backend_params())
def test_mix_rows_layouts(backend):
    index = torch.randperm(4)
    x = torch.randn(4, 3, 5, 6).to(memory_format=torch.channels_last)
    out = run_on(backend, mix_rows, x, index, 0.25)
    assert out.is_contiguous(memory_format=torch.channels_last)  # read in place, layout kept
    assert_close(out, exact_mix(x, index, 0.25).float(), rtol=1e-6, atol=1e-6)
    for view in (torch.randn(11, 4).t(), torch.randn(4, 40)[:, ::3], torch.randn(8, 4, 6)[::2, 1:]):
        idx = torch.randperm(view.shape[0])
        out = run_on(backend, mix_rows, view, idx, 0.4)
        assert out.is_contiguous()
        assert torch.equal(out, run_on(backend, mix_rows, view.contiguous(), idx, 0.4))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", [(0,), (0, 5), (3, 0), (1, 1), (1, 7)])
def test_mix_rows_empty_and_single(backend, shape):
    x = torch.randn(shape)
    index = torch.randperm(shape[0])
    out = run_on(backend, mix_rows, x, index, 0.5)
    assert out.shape == x.shape
    assert torch.equal(out, x)  # a batch of one mixes with itself


def test_mix_rows_gradcheck_fp64():
    x = torch.randn(5, 3, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.tensor(0.37, dtype=torch.float64)
    for index in (torch.randperm(5), torch.tensor([0, 0, 4, 2, 0])):  # a permutation; repeats
        assert torch.autograd.gradcheck(lambda x: mix_rows_op(x, index, lam), (x,))
        assert torch.autograd.gradgradcheck(lambda x: mix_rows_op(x, index, lam), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mix_rows_gradient_is_scatter_by_index(dtype):
    x = torch.randn(7, 9).to(dtype).requires_grad_()
    index = torch.randperm(7)
    grad = torch.randn(7, 9).to(dtype)
    mix_rows(x, index, 0.3).backward(grad)
    expected = 0.3 * grad.double()
    expected.index_add_(0, index, 0.7 * grad.double())
    assert x.grad.dtype == dtype
    assert_close(x.grad.double(), expected, rtol=0, atol=1e-6 if dtype == torch.float32 else 2e-2)
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(7)
    assert_close(x.grad.double(), 0.3 * grad.double() + 0.7 * grad.double()[inverse], rtol=0,
                 atol=1e-6 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("backend", backend_params())
def test_mix_rows_opcheck(backend):
    with noisefast.use_backend(backend):
        _opcheck_mix_rows()


def _opcheck_mix_rows():
    lam = torch.tensor(0.4, dtype=torch.float64)
    torch.library.opcheck(mix_rows_op, (torch.randn(5, 3, 4), torch.randperm(5), lam))
    torch.library.opcheck(mix_rows_op, (torch.randn(5, 3, requires_grad=True), torch.tensor([1, 1, 0, 4, 2]), lam))
    torch.library.opcheck(mix_rows_op, (torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last),
                                        torch.randperm(4), lam))
    torch.library.opcheck(mix_rows_op, (torch.randn(6, 5, dtype=torch.bfloat16), torch.randperm(6), lam))
    torch.library.opcheck(mix_rows_op, (torch.randn(0, 5), torch.randperm(0), lam))


def test_mix_rows_errors():
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="index"):
        mix_rows(x, torch.randperm(3), 0.5)
    with pytest.raises(ValueError, match="index"):
        mix_rows(x, torch.randperm(4).int(), 0.5)
    with pytest.raises(TypeError, match="index"):
        mix_rows(x, [0, 1, 2, 3], 0.5)
    with pytest.raises(IndexError, match="index"):
        mix_rows(x, torch.tensor([0, 1, 2, 4]), 0.5)
    with pytest.raises(IndexError, match="index"):
        mix_rows(x, torch.tensor([0, -1, 2, 3]), 0.5)
    with pytest.raises(ValueError, match="lam"):
        mix_rows(x, torch.randperm(4), 1.5)
    with pytest.raises(ValueError, match="lam"):
        mix_rows(x, torch.randperm(4), torch.tensor([0.1, 0.2]))
    with pytest.raises(TypeError, match="lam"):
        mix_rows(x, torch.randperm(4), "0.5")
    with pytest.raises(TypeError, match="x"):
        mix_rows(torch.ones(4, 3, dtype=torch.int64), torch.randperm(4), 0.5)
    with pytest.raises(ValueError, match="x"):
        mix_rows(torch.tensor(1.0), torch.randperm(1), 0.5)


def test_cpu_kernel_checks_index_itself():
    # the C++ kernel guards its own reads, even when called directly
    with pytest.raises(IndexError, match="index"):
        torch.ops.noisefast_C.mix_rows(torch.randn(3, 2), torch.tensor([0, 3, 1]), torch.tensor(0.5, dtype=torch.float64))


def test_mix_rows_op_compiles_fullgraph():
    fn = torch.compile(lambda x, index, lam: mix_rows(x * 2, index, lam).sum(-1), fullgraph=True)
    x, index = torch.randn(5, 6), torch.randperm(5)
    lam = torch.tensor(0.3, dtype=torch.float64)
    assert_close(fn(x, index, lam), (exact_mix(x * 2, index, 0.3)).sum(-1).float(), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", [(1, 7), (37, 3), (5, 3, 7), (129, 4099), (3, 70001)])
def test_cuda_mix_rows_matches_reference(dtype, shape):
    x = torch.randn(shape, dtype=torch.float64).to(dtype)
    index = torch.randperm(shape[0])
    lam = torch.tensor(0.3141, dtype=torch.float64)
    out = mix_rows(x.cuda(), index.cuda(), lam.cuda())
    expected = ref.mix_rows(x, index, lam)
    if dtype in LOW_PRECISION:
        assert_low_precision_rule(out.cpu(), ref.mixup_inputs(x, index, 0.3141), exact_mix(x, index, 0.3141),
                                  what=str(dtype))
    else:
        assert_close(out.cpu(), expected, rtol=1e-6 if dtype == torch.float32 else 1e-15, atol=1e-6)
