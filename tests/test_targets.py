"""smooth_labels and mixup: exactness, dtypes, autograd, the Beta draw, reproducibility,
torch.compile, errors. The fused op behind mixup, mix_rows, is tested in test_mix_rows.py."""
import math

import pytest
import torch
from torch.nn import functional as F

import noisefast
from noisefast.beta import CANDIDATES, beta_variates, log_gamma_variates
from noisefast.reference import mix_rows as mix_ref
from noisefast.reference import targets as ref
from noisefast.targets import MixupBatch, mixup, smooth_labels

from helpers import assert_close, backend_params, exact_mix, one_rounding_tolerance

# ------------------------------------------------------------------------------------------------
# smooth_labels


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35, 1.0])
@pytest.mark.parametrize("num_classes", [1, 2, 10, 37])
def test_smooth_labels_matches_torch_label_smoothing(eps, num_classes):
    g = torch.Generator().manual_seed(num_classes)
    logits = torch.randn(64, num_classes, generator=g) * 3
    y = torch.randint(0, num_classes, (64,), generator=g)
    soft = smooth_labels(y, num_classes, eps)
    assert soft.shape == (64, num_classes) and soft.dtype == torch.float32
    for reduction in ("mean", "none"):
        assert_close(F.cross_entropy(logits, soft, reduction=reduction),
                     F.cross_entropy(logits, y, label_smoothing=eps, reduction=reduction), rtol=1e-6, atol=1e-6)


def test_smooth_labels_values_and_extra_dims():
    y = torch.tensor([[0, 2], [1, 1], [2, 0]])
    soft = smooth_labels(y, 3, 0.3)
    assert soft.shape == (3, 2, 3)
    expected = torch.full((3, 2, 3), 0.1)
    expected.scatter_(-1, y.unsqueeze(-1), 0.8)
    assert_close(soft, expected, rtol=0, atol=1e-7)
    assert_close(soft.sum(-1), torch.ones(3, 2), rtol=0, atol=1e-6)
    # spatial targets, class dim last here and at dim 1 for F.cross_entropy
    logits = torch.randn(3, 3, 2)
    assert_close(F.cross_entropy(logits, soft.movedim(-1, 1)), F.cross_entropy(logits, y, label_smoothing=0.3),
                 rtol=1e-6, atol=1e-6)
    assert torch.equal(smooth_labels(y, 3, 0.0), F.one_hot(y, 3).float())


def test_smooth_labels_soft_targets_and_dtype():
    probs = torch.softmax(torch.randn(5, 4, dtype=torch.float64), -1)
    out = smooth_labels(probs, 4, 0.2)
    assert out.dtype == torch.float64
    assert_close(out, 0.8 * probs + 0.05, rtol=0, atol=1e-15)
    onehot = F.one_hot(torch.tensor([3, 0]), 4).float()
    assert torch.equal(smooth_labels(onehot, 4, 0.2), smooth_labels(torch.tensor([3, 0]), 4, 0.2))
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        assert smooth_labels(torch.tensor([1]), 4, 0.1, dtype=dtype).dtype == dtype
    assert smooth_labels(torch.tensor([1], dtype=torch.int32), 4, 0.1).shape == (1, 4)
    assert smooth_labels(torch.empty(0, dtype=torch.int64), 4, 0.1).shape == (0, 4)


def test_smooth_labels_errors_name_arguments():
    y = torch.tensor([0, 1])
    for bad in (-0.1, 1.5, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="eps"):
            smooth_labels(y, 3, bad)
    with pytest.raises(ValueError, match="num_classes"):
        smooth_labels(y, 0, 0.1)
    with pytest.raises(TypeError, match="num_classes"):
        smooth_labels(y, 3.0, 0.1)
    with pytest.raises(ValueError, match="target"):
        smooth_labels(torch.tensor([0, 3]), 3, 0.1)
    with pytest.raises(ValueError, match="target"):
        smooth_labels(torch.tensor([-1, 0]), 3, 0.1)
    with pytest.raises(ValueError, match="target"):
        smooth_labels(torch.rand(2, 4), 3, 0.1)
    with pytest.raises(TypeError, match="target"):
        smooth_labels(torch.tensor([True]), 3, 0.1)
    with pytest.raises(TypeError, match="target"):
        smooth_labels([0, 1], 3, 0.1)
    with pytest.raises(TypeError, match="dtype"):
        smooth_labels(y, 3, 0.1, dtype=torch.int64)


def test_smooth_labels_compiles():
    fn = torch.compile(lambda logits, y: F.cross_entropy(logits, smooth_labels(y, 5, 0.1)), fullgraph=True)
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert_close(fn(logits, y), F.cross_entropy(logits, y, label_smoothing=0.1), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# The Beta draw


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_beta_variates_ks_against_scipy(alpha):
    pytest.importorskip("scipy.stats")  # the GPU machine has no scipy
    import scipy.stats
    draws = beta_variates(alpha, alpha, 50_000, generator=torch.Generator().manual_seed(11))
    assert draws.dtype == torch.float64 and bool(((draws >= 0) & (draws <= 1)).all())
    result = scipy.stats.kstest(draws.numpy(), scipy.stats.beta(alpha, alpha).cdf)
    assert result.pvalue > 1e-3, result


def test_beta_variates_asymmetric_and_gamma():
    pytest.importorskip("scipy.stats")  # the GPU machine has no scipy
    import scipy.stats
    draws = beta_variates(0.5, 3.0, 50_000, generator=torch.Generator().manual_seed(12))
    assert scipy.stats.kstest(draws.numpy(), scipy.stats.beta(0.5, 3.0).cdf).pvalue > 1e-3
    for shape in (0.3, 1.0, 7.5):
        g = torch.exp(log_gamma_variates(shape, 50_000, generator=torch.Generator().manual_seed(13)))
        assert scipy.stats.kstest(g.numpy(), scipy.stats.gamma(shape).cdf).pvalue > 1e-3


def test_beta_variates_use_a_fixed_number_of_draws():
    # the generator advances by the same amount whatever the values: no data-dependent loop
    states = []
    for seed in (0, 1):
        g = torch.Generator().manual_seed(seed)
        beta_variates(0.2, 0.2, 3, generator=g)
        probe = torch.Generator().manual_seed(seed)
        torch.randn(3, CANDIDATES, generator=probe, dtype=torch.float64)
        torch.rand(3, CANDIDATES, generator=probe, dtype=torch.float64)
        torch.rand(3, generator=probe, dtype=torch.float64)
        torch.randn(3, CANDIDATES, generator=probe, dtype=torch.float64)
        torch.rand(3, CANDIDATES, generator=probe, dtype=torch.float64)
        torch.rand(3, generator=probe, dtype=torch.float64)
        states.append(torch.equal(g.get_state(), probe.get_state()))
    assert all(states)


def test_beta_variates_errors():
    with pytest.raises(ValueError, match="shape"):
        log_gamma_variates(0.0, 3)
    with pytest.raises(ValueError, match="shape"):
        beta_variates(1.0, float("inf"), 3)


# ------------------------------------------------------------------------------------------------
# mixup


def test_mixup_batch_is_the_formula():
    x = torch.randn(16, 3, 5)
    y = torch.randint(0, 10, (16,))
    batch = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(0))
    assert isinstance(batch, MixupBatch)
    lam = float(batch.lam)
    assert 0 <= lam <= 1 and batch.lam.dtype == torch.float64 and batch.lam.dim() == 0
    assert torch.equal(torch.sort(batch.index).values, torch.arange(16))
    assert_close(batch.x, exact_mix(x, batch.index, lam).float(), rtol=1e-6, atol=1e-6)
    assert torch.equal(batch.y_a, y) and torch.equal(batch.y_b, y[batch.index])


def test_mixup_draws_lam_then_the_permutation_from_the_generator():
    g = torch.Generator().manual_seed(5)
    batch = mixup(torch.randn(10, 2), torch.arange(10), 0.4, generator=g)
    probe = torch.Generator().manual_seed(5)
    lam = beta_variates(0.4, 0.4, 1, generator=probe)
    assert batch.lam.item() == lam.item()
    assert torch.equal(batch.index, torch.randperm(10, generator=probe))


def test_mixup_lam_distribution_ks():
    pytest.importorskip("scipy.stats")  # the GPU machine has no scipy
    import scipy.stats
    g = torch.Generator().manual_seed(21)
    lams = [mixup(torch.zeros(2, 1), torch.zeros(2, dtype=torch.int64), 0.2, generator=g).lam.item()
            for _ in range(2000)]
    assert scipy.stats.kstest(lams, scipy.stats.beta(0.2, 0.2).cdf).pvalue > 1e-3


def test_mixup_permutation_is_uniform():
    pytest.importorskip("scipy.stats")  # the GPU machine has no scipy
    import scipy.stats
    g = torch.Generator().manual_seed(22)
    counts = torch.zeros(6, 6)
    for _ in range(3000):
        index = mixup(torch.zeros(6, 1), torch.arange(6), 1.0, generator=g).index
        counts[torch.arange(6), index] += 1
    chi2 = scipy.stats.chisquare(counts.reshape(-1).numpy())
    assert chi2.pvalue > 1e-3


def test_mixup_reproducible_and_fresh():
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    a = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(3))
    b = mixup(x, y, 1.0, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index) and a.lam.item() == b.lam.item()
    torch.manual_seed(9)
    c, d = mixup(x, y, 1.0), mixup(x, y, 1.0)
    torch.manual_seed(9)
    assert torch.equal(mixup(x, y, 1.0).x, c.x)
    assert not torch.equal(c.x, d.x)


@pytest.mark.parametrize("alpha", [0.0, -1.0])
def test_mixup_alpha_nonpositive_means_no_mixing(alpha):
    x = torch.randn(5, 3)
    batch = mixup(x, torch.arange(5), alpha)
    assert batch.lam.item() == 1.0
    assert torch.equal(batch.x, x)


def test_mixup_loss_and_targets():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 4), torch.randint(0, 5, (12,))
    batch = mixup(x, y, 1.0, generator=g)
    logits = torch.randn(12, 5)
    lam = batch.lam.item()
    expected = lam * F.cross_entropy(logits, y) + (1 - lam) * F.cross_entropy(logits, y[batch.index])
    assert batch.loss(logits).dtype == torch.float32
    assert_close(batch.loss(logits), expected, rtol=1e-6, atol=1e-6)
    targets = batch.targets(5)
    assert targets.shape == (12, 5) and targets.dtype == torch.float32
    assert_close(targets.sum(-1), torch.ones(12), rtol=0, atol=1e-6)
    assert_close(F.cross_entropy(logits, targets), expected, rtol=1e-6, atol=1e-6)
    per_sample = batch.loss(logits, lambda o, t: F.cross_entropy(o, t, reduction="none"))
    assert per_sample.shape == (12,)
    # soft (e.g. smoothed) targets go through the same way
    soft = smooth_labels(y, 5, 0.1)
    soft_batch = mixup(x, soft, 1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(soft_batch.index, batch.index)
    assert_close(soft_batch.targets(), lam * soft + (1 - lam) * soft[batch.index], rtol=0, atol=1e-7)
    assert_close(F.cross_entropy(logits, soft_batch.targets(5)), soft_batch.loss(logits), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        batch.targets()
    with pytest.raises(ValueError, match="num_classes"):
        soft_batch.targets(4)


def test_mixup_gradient_reaches_x():
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    batch = mixup(x, torch.arange(6), 1.0, generator=torch.Generator().manual_seed(2))
    weights = torch.randn(6, 5, dtype=torch.float64)
    (batch.x * weights).sum().backward()
    lam = batch.lam.item()
    expected = lam * weights
    expected.index_add_(0, batch.index, (1 - lam) * weights)
    assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_mixup_every_dtype_and_backend(backend, dtype):
    x = torch.randn(9, 3, 7).to(dtype)
    with noisefast.use_backend(backend):
        batch = mixup(x, torch.arange(9), 1.0, generator=torch.Generator().manual_seed(4))
    assert batch.x.dtype == dtype
    expected = mix_ref.mix_rows(x, batch.index, batch.lam)
    assert_close(batch.x, expected, **one_rounding_tolerance(dtype), what=str(dtype))


def test_mixup_empty_and_single():
    batch = mixup(torch.empty(0, 3), torch.empty(0, dtype=torch.int64), 1.0)
    assert batch.x.shape == (0, 3) and batch.index.shape == (0,)
    x = torch.randn(1, 3)
    batch = mixup(x, torch.tensor([2]), 0.2)
    assert batch.index.tolist() == [0]
    assert_close(batch.x, x, rtol=2e-7, atol=0)  # lam * x + (1 - lam) * x, up to rounding


def test_mixup_compiles_fullgraph():
    model = torch.nn.Linear(4, 3)

    def step(x, y):
        batch = mixup(x, y, 1.0)
        return batch.loss(model(batch.x)), batch.targets(3)

    compiled = torch.compile(step, fullgraph=True)
    x, y = torch.randn(8, 4, requires_grad=True), torch.randint(0, 3, (8,))
    loss, targets = compiled(x, y)
    loss.backward()
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert targets.shape == (8, 3)
    assert_close(targets.sum(-1), torch.ones(8), rtol=0, atol=1e-6)
    assert x.grad is not None and x.grad.shape == x.shape


def test_mixup_errors_name_arguments():
    x, y = torch.randn(4, 3), torch.arange(4)
    with pytest.raises(TypeError, match="x"):
        mixup(torch.ones(4, 3, dtype=torch.int64), y, 1.0)
    with pytest.raises(ValueError, match="x"):
        mixup(torch.tensor(1.0), y, 1.0)
    with pytest.raises(ValueError, match="y"):
        mixup(x, torch.arange(5), 1.0)
    with pytest.raises(TypeError, match="y"):
        mixup(x, [0, 1, 2, 3], 1.0)
    for bad in (float("nan"), float("inf"), "1", None):
        with pytest.raises(ValueError, match="alpha"):
            mixup(x, y, bad)
    with pytest.raises(TypeError, match="generator"):
        mixup(x, y, 1.0, generator=0)


# ------------------------------------------------------------------------------------------------
# GPU


@pytest.mark.cuda
def test_cuda_mixup_channels_last_grad_and_generator():
    x = torch.randn(8, 3, 9, 9, device="cuda").to(memory_format=torch.channels_last).requires_grad_()
    y = torch.randint(0, 10, (8,), device="cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    batch = mixup(x, y, 1.0, generator=g)
    assert batch.lam.device.type == "cuda" and batch.index.device.type == "cuda"
    assert batch.x.is_contiguous(memory_format=torch.channels_last)
    lam = batch.lam.item()
    assert_close(batch.x, exact_mix(x.detach(), batch.index, lam).float(), rtol=1e-6, atol=1e-6)
    batch.x.sum().backward()
    assert_close(x.grad, torch.ones_like(x), rtol=0, atol=1e-6)  # lam + (1 - lam) per element
    again = mixup(x.detach(), y, 1.0, generator=torch.Generator(device="cuda").manual_seed(0))
    assert torch.equal(again.x, batch.x.detach())


@pytest.mark.cuda
def test_cuda_mixup_graph_capture_gives_fresh_mixing_each_replay():
    x = torch.randn(64, 32, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    mixup(x, y, 1.0)  # warm up outside the graph
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        batch = mixup(x, y, 1.0)
    graph.replay()
    first = batch.x.clone()
    graph.replay()
    assert not torch.equal(first, batch.x)
