"""gaussian_noise and GaussianNoise: exact agreement, broadcasting, dtypes, autograd, errors."""
import math

import pytest
import torch

import noisefast
from noisefast.ops.gaussian_noise import broadcast_as_scale, gaussian_noise_op
from noisefast.reference.philox import normal_stream

from helpers import LOW_PRECISION, assert_close, assert_low_precision_rule, backend_params, run_on

SHAPES = [(1,), (7,), (1025,), (3, 5, 7), (2, 3, 17, 9)]


def noise_with(backend, x, std, seed=0, **kw):
    return run_on(backend, noisefast.gaussian_noise, x, std, generator=torch.Generator().manual_seed(seed), **kw)


def expected_noise(x, std, seed=0):
    """x + std * z in float64, z from the reference stream with the seed the op draws."""
    drawn = torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(seed)).item()
    z = normal_stream(x.numel(), drawn).double().view(x.shape)
    std = std.double() if isinstance(std, torch.Tensor) else std
    return x.double() + std * z, z


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape", SHAPES)
def test_scalar_std_matches_reference_fp32(backend, shape):
    x = torch.randn(shape)
    out = noise_with(backend, x, 0.7)
    exact, _ = expected_noise(x, 0.7)
    assert out.dtype == torch.float32 and out.shape == x.shape
    assert_close(out, exact.float(), rtol=1e-6, atol=1e-6, what=backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("std_shape", [(), (2, 1, 1, 1), (3, 1, 1), (9,), (2, 3, 17, 9), (2, 1, 17, 1), (1, 3, 1, 9)])
def test_tensor_std_broadcasts(backend, std_shape):
    x = torch.randn(2, 3, 17, 9)
    std = torch.rand(std_shape) + 0.1
    out = noise_with(backend, x, std)
    exact, _ = expected_noise(x, std)
    assert_close(out, exact.float(), rtol=1e-6, atol=1e-6, what=f"{backend} std{std_shape}")


@pytest.mark.parametrize("std_shape,expected_inner,materialised", [
    ((), 1, False), ((2, 1, 1, 1), 3 * 17 * 9, False), ((3, 1, 1), 17 * 9, False), ((9,), 1, False),
    ((17, 9), 1, False), ((2, 1, 17, 1), 1, True),
])
def test_broadcast_as_scale(std_shape, expected_inner, materialised):
    shape = torch.Size([2, 3, 17, 9])
    std = torch.rand(std_shape)
    scale, inner = broadcast_as_scale(std, shape)
    assert inner == expected_inner
    assert (scale.numel() == shape.numel()) == materialised
    i = torch.arange(shape.numel())
    assert torch.equal(scale[(i // inner) % scale.numel()].view(shape), std.expand(shape))


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_low_precision(backend, dtype):
    x = (torch.randn(3, 5, 67) * 3).to(dtype)
    std = 0.5
    out = noise_with(backend, x, std)
    assert out.dtype == dtype
    exact, z = expected_noise(x, std)
    eager_low = x + (std * z).to(dtype)  # the same sum done in dtype by eager PyTorch
    assert_low_precision_rule(out, eager_low, exact, what=f"{backend} {dtype}")


@pytest.mark.parametrize("backend", backend_params())
def test_float64(backend):
    x = torch.randn(5, 33, dtype=torch.float64)
    std = torch.rand(5, 1, dtype=torch.float64)
    out = noise_with(backend, x, std)
    exact, _ = expected_noise(x, std)
    assert out.dtype == torch.float64
    # z is float32: the result is exact up to z's last bits times std
    assert_close(out, exact, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", backend_params())
def test_non_contiguous_input_uses_logical_order(backend):
    base = torch.randn(9, 13)
    x = base.t()  # [13, 9], not contiguous
    out = noise_with(backend, x, 0.3, seed=5)
    assert out.is_contiguous()
    assert torch.equal(out, noise_with(backend, x.contiguous(), 0.3, seed=5))
    sliced = torch.randn(4, 40)[:, ::3]
    assert torch.equal(noise_with(backend, sliced, 0.3, seed=6), noise_with(backend, sliced.contiguous(), 0.3, seed=6))


@pytest.mark.parametrize("backend", backend_params())
def test_empty(backend):
    x = torch.empty(0, 3)
    out = noise_with(backend, x, 1.0)
    assert out.shape == (0, 3)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("x_shape, std_shape", [((3, 0), (0,)), ((0, 4), (4,)), ((2, 0, 5), (0, 1)), ((0,), ())],
                         ids=["empty-std", "empty-x", "empty-inner", "0-d-std"])
def test_empty_x_with_a_broadcastable_std(backend, x_shape, std_shape):
    """issue #13 item 11: gaussian_noise(torch.empty(3, 0), torch.ones(0)) raised "the std tensor is
    empty" for a valid empty broadcast."""
    std = torch.ones(std_shape, requires_grad=True)
    out = run_on(backend, noisefast.gaussian_noise, torch.empty(x_shape), std)
    assert out.shape == x_shape
    out.sum().backward()
    assert std.grad.shape == std_shape and not std.grad.any()


def test_zero_std_is_exact_copy():
    x = torch.randn(100)
    out = noisefast.gaussian_noise(x, 0.0)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_reproducible_under_manual_seed_and_fresh_each_call():
    x = torch.zeros(1000)
    torch.manual_seed(1)
    a, b = noisefast.gaussian_noise(x, 1.0), noisefast.gaussian_noise(x, 1.0)
    torch.manual_seed(1)
    assert torch.equal(a, noisefast.gaussian_noise(x, 1.0))
    assert not torch.equal(a, b)


def test_statistics_of_the_noise():
    x = torch.full((200_000,), 3.0)
    std = 0.25
    noise = ((noisefast.gaussian_noise(x, std) - x) / std).double()
    n = noise.numel()
    assert abs(noise.mean().item()) < 5 / math.sqrt(n)
    assert abs(noise.var().item() - 1) < 5 * math.sqrt(2 / n)


def test_training_false_is_identity():
    x = torch.randn(4)
    assert noisefast.gaussian_noise(x, 1.0, training=False) is x


def test_gradient_is_identity_for_x():
    x = torch.randn(3, 7, requires_grad=True)
    out = noisefast.gaussian_noise(x, 0.5)
    grad = torch.randn(3, 7)
    out.backward(grad)
    assert torch.equal(x.grad, grad)


@pytest.mark.parametrize("backend", backend_params())
def test_gradient_of_tensor_std_regenerates_the_noise(backend):
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    std = (torch.rand(4, 1, 1, dtype=torch.float64) + 0.5).requires_grad_()
    with noisefast.use_backend(backend):
        out = noisefast.gaussian_noise(x, std, generator=torch.Generator().manual_seed(2))
    grad = torch.randn_like(out)
    out.backward(grad)
    _, z = expected_noise(x, std.detach(), seed=2)
    assert_close(std.grad, (grad * z).sum(dim=(1, 2), keepdim=True), rtol=1e-6, atol=1e-6)


def test_gradcheck_of_the_op():
    seed = torch.tensor([42])
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s: gaussian_noise_op(x, seed, 0.8, s, 4, 0, 1, 1), (x, scale))


def test_opcheck():
    x = torch.randn(4, 3, 5)
    seed = torch.tensor([7])
    torch.library.opcheck(gaussian_noise_op, (x, seed, 0.5, None, 1, 0, 1, 1))
    torch.library.opcheck(gaussian_noise_op, (x.requires_grad_(), seed, 1.0, torch.rand(4, requires_grad=True), 15, 0, 1, 1))
    torch.library.opcheck(gaussian_noise_op, (torch.randn(6, dtype=torch.bfloat16), seed, 1.0, None, 1, 0, 1, 1))


def test_compile_fullgraph_traces_without_breaks():
    def step(x, std):
        return (noisefast.gaussian_noise(x * 2, 0.3) + noisefast.gaussian_noise(x, std)).sum()

    compiled = torch.compile(step, fullgraph=True)
    x = torch.randn(4, 3, 5, requires_grad=True)
    std = torch.rand(4, 1, 1, requires_grad=True)
    compiled(x, std).backward()
    assert torch.equal(x.grad, torch.full_like(x, 3.0))
    assert std.grad.shape == std.shape


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_std_number(bad):
    with pytest.raises(ValueError, match="std"):
        noisefast.gaussian_noise(torch.zeros(3), bad)


@pytest.mark.parametrize("bad", [torch.tensor([0.1, -0.1]), torch.tensor([0.1, float("nan")]),
                                 torch.tensor([float("inf"), 1.0])])
def test_bad_std_tensor_values_raise_before_writing(bad):
    with pytest.raises(ValueError, match="std"):
        noisefast.gaussian_noise(torch.zeros(4, 2), bad)


@pytest.mark.parametrize("x_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("std_dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_zero_dim_cpu_std_read_as_a_number_gives_the_tensor_path_bits(x_dtype, std_dtype):
    # In eager mode a 0-d CPU std without gradient is read as a number (a shorter path); the result
    # must be bit for bit what the one-element scale operand gives on every backend.
    from noisefast.ops.gaussian_noise import KERNELS
    x = torch.randn(3, 37).to(x_dtype)
    std = torch.tensor(1.0 / 3.0, dtype=std_dtype)
    for backend in ("cpu", "reference", "triton"):
        got = run_on(backend, noisefast.gaussian_noise, x, std, generator=torch.Generator().manual_seed(4))
        seed = noisefast.random.draw_seed("cpu", torch.Generator().manual_seed(4))
        with noisefast.use_backend(backend):
            expected = KERNELS.call(x, seed, 1.0, std.reshape(1), 1, 0, 1, 1, False)
        assert torch.equal(got, expected), backend


def test_a_zero_dim_std_that_requires_grad_still_gets_its_gradient():
    std = torch.tensor(0.5, requires_grad=True)
    x = torch.randn(50)
    out = noisefast.gaussian_noise(x, std, generator=torch.Generator().manual_seed(2))
    out.sum().backward()
    z = (out.detach() - x) / 0.5
    assert std.grad is not None and torch.allclose(std.grad, z.sum(), rtol=1e-5, atol=1e-5)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="std"):
            noisefast.gaussian_noise(x, torch.tensor(bad))


def test_bad_std_shape_and_type():
    with pytest.raises(ValueError, match="std"):
        noisefast.gaussian_noise(torch.zeros(4, 3), torch.ones(4))  # [4] does not broadcast to [4, 3]
    with pytest.raises(ValueError, match="std"):
        noisefast.gaussian_noise(torch.zeros(3), torch.ones(2, 3))  # would grow x
    with pytest.raises(TypeError, match="std"):
        noisefast.gaussian_noise(torch.zeros(3), torch.ones(3, dtype=torch.int64))
    with pytest.raises(TypeError, match="std"):
        noisefast.gaussian_noise(torch.zeros(3), "0.1")
    with pytest.raises(TypeError, match="x"):
        noisefast.gaussian_noise(torch.zeros(3, dtype=torch.int32), 0.1)


def test_module_train_and_eval():
    layer = noisefast.GaussianNoise(0.5)
    x = torch.randn(8, 4)
    assert not torch.equal(layer(x), x)
    layer.eval()
    assert layer(x) is x
    assert "std=0.5" in repr(layer)
    with pytest.raises(ValueError, match="std"):
        noisefast.GaussianNoise(-1.0)


def test_module_with_tensor_std_is_a_buffer():
    layer = noisefast.GaussianNoise(torch.tensor([0.1, 0.2, 0.3]))
    assert "std" in dict(layer.named_buffers())
    out = layer(torch.zeros(5, 3))
    assert out.shape == (5, 3)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), noisefast.GaussianNoise(0.1), torch.nn.Linear(3, 1))
    net(torch.randn(2, 3)).sum().backward()
    assert net[0].weight.grad is not None


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("std_shape", [(), (5, 1, 1), (7,)])
def test_cuda_matches_reference(backend, dtype, std_shape):
    # 10185 elements (not a multiple of 4: the tail); the last dimension is 7 so that a per-column
    # std of shape (7,) broadcasts (with 7 * 97 there, broadcast_as_scale raised in the test itself).
    x = torch.randn(5, 3 * 97, 7, dtype=torch.float64).to(dtype)
    std = torch.rand(std_shape, dtype=torch.float64) + 0.1 if std_shape else 0.4
    seed = torch.tensor([12345])
    scale, inner = (broadcast_as_scale(std, x.shape) if isinstance(std, torch.Tensor) else (None, 1))
    std_value = 1.0 if isinstance(std, torch.Tensor) else std
    with noisefast.use_backend(backend):
        out = gaussian_noise_op(x.cuda(), seed.cuda(), std_value, None if scale is None else scale.cuda(), inner, 0, 1, 1)
    expected = noisefast.reference.gaussian_noise.gaussian_noise(x, seed, std_value, scale, inner, 0, 1, 1)
    if dtype in LOW_PRECISION:
        exact = x.double() + (std.double() if isinstance(std, torch.Tensor) else std) * \
            normal_stream(x.numel(), 12345).double().view(x.shape)
        assert_low_precision_rule(out.cpu(), expected, exact, floor=1e-6, what=f"{backend} {dtype}")
    else:
        assert_close(out.cpu(), expected, rtol=1e-5, atol=2e-6, what=f"{backend} {dtype}")


@pytest.mark.cuda
def test_cuda_misaligned_and_noncontiguous():
    base = torch.randn(1 + 3 * 1001, device="cuda")
    x = base[1:].view(3, 1001)[:, ::2]
    torch.manual_seed(3)
    out = noisefast.gaussian_noise(x, 0.2)
    torch.manual_seed(3)
    assert torch.equal(out, noisefast.gaussian_noise(x.contiguous(), 0.2))
    torch.manual_seed(3)
    with noisefast.use_backend("triton"):
        assert_close(noisefast.gaussian_noise(x, 0.2), out, rtol=1e-5, atol=1e-6)


@pytest.mark.cuda
def test_cuda_graph_capture_gives_fresh_noise_each_replay():
    x = torch.zeros(4096, device="cuda")
    static_out = noisefast.gaussian_noise(x, 1.0)  # warm up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = noisefast.gaussian_noise(x, 1.0)
    graph.replay()
    first = static_out.clone()
    graph.replay()
    assert not torch.equal(first, static_out)
    assert abs(static_out.std().item() - 1) < 0.1
