"""robustness_curve and plot.robustness_curve: values, mode handling, determinism, errors."""
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from noisefast import plot
from noisefast.reference.philox import normal_stream
from noisefast.robustness import RobustnessCurve, accuracy, robustness_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Constant(nn.Module):
    """Ignores its input: predicts class 1 of 3."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([0.0, 1.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 3)


def linear_problem(n=2000, seed=0):
    """Two well-separated Gaussian classes and the linear classifier that separates them."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 4, generator=g) * 0.3 + (2 * y - 1).float()[:, None]
    model = nn.Linear(4, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]))
        model.bias.zero_()
    return model, x, y


def test_model_that_ignores_its_input_gives_a_flat_curve():
    x = torch.randn(50, 4)
    y = torch.tensor([1] * 20 + [0] * 30)
    curve = robustness_curve(Constant(), (x, y), [0.0, 0.5, 2.0, 10.0])
    assert curve.values == (0.4, 0.4, 0.4, 0.4)
    assert curve.count == 50 and curve.metric == "accuracy" and curve.stds == (0.0, 0.5, 2.0, 10.0)
    loss = robustness_curve(Constant(), (x, y), [0.0, 3.0], metric="loss")
    expected = F.cross_entropy(Constant()(x), y).item()
    assert loss.values[0] == pytest.approx(expected, rel=1e-6) and loss.values[1] == pytest.approx(expected, rel=1e-6)


def test_linear_classifier_accuracy_falls_with_noise():
    model, x, y = linear_problem()
    curve = robustness_curve(model, (x, y), [0.0, 0.5, 1.0, 2.0, 4.0], generator=torch.Generator().manual_seed(0))
    values = curve.values
    assert values[0] > 0.99
    assert all(a > b for a, b in zip(values, values[1:])), values
    assert 0.4 < values[-1] < 0.8
    # the exact value at std 1: noise on w.x is N(0, 4 std^2) for w = (1,1,1,1) differences
    margin = (model(x)[:, 1] - model(x)[:, 0]).detach() * (2 * y - 1)
    expected = torch.distributions.Normal(0, 2 * 2 * 1.0).cdf(margin).mean().item()
    assert values[2] == pytest.approx(expected, abs=0.03)


def test_batches_and_single_pair_agree_on_clean_data():
    model, x, y = linear_problem(300)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64)
    whole = robustness_curve(model, (x, y), [0.0], metric="loss")
    batched = robustness_curve(model, loader, [0.0], metric="loss")
    assert batched.count == 300
    assert batched.values[0] == pytest.approx(whole.values[0], rel=1e-6)
    one_shot = robustness_curve(model, iter(loader), [0.0, 1.0])  # read once: an iterator works
    assert one_shot.count == 300


def test_noise_is_the_portable_stream_under_the_generator():
    captured = []

    def spy(inputs):
        captured.append(inputs.clone())
        return torch.zeros(inputs.shape[0], 2)

    x = torch.randn(8, 3)
    robustness_curve(spy, (x, torch.zeros(8, dtype=torch.int64)), [0.0, 0.7], generator=torch.Generator().manual_seed(4))
    assert torch.equal(captured[0], x)
    seed = torch.randint(0, 2 ** 63 - 1, (1,), generator=torch.Generator().manual_seed(4)).item()
    z = normal_stream(x.numel(), seed).view(8, 3)
    torch.testing.assert_close(captured[1], x + 0.7 * z, rtol=1e-6, atol=1e-6)


def test_determinism_with_generator():
    model, x, y = linear_problem(500)
    stds = [0.5, 1.0, 1.5]
    a = robustness_curve(model, (x, y), stds, generator=torch.Generator().manual_seed(1))
    b = robustness_curve(model, (x, y), stds, generator=torch.Generator().manual_seed(1))
    c = robustness_curve(model, (x, y), stds, generator=torch.Generator().manual_seed(2))
    assert a == b
    assert a.values != c.values


def test_modes_restored_and_eval_used():
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Dropout(0.5)
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            seen.append((self.training, self.inner.training, torch.is_grad_enabled()))
            return self.lin(self.inner(x))

    model = Probe()
    model.train()
    model.lin.eval()  # a mixed state must come back exactly
    robustness_curve(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)), [0.0, 1.0])
    assert seen == [(False, False, False)] * 2
    assert model.training and model.inner.training and not model.lin.training

    def broken(output, y):
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        robustness_curve(model, (torch.randn(4, 3), torch.zeros(4, dtype=torch.int64)), [0.0], metric=broken)
    assert model.training and model.inner.training and not model.lin.training


def test_custom_metrics_scalar_and_per_sample():
    model, x, y = linear_problem(200)
    per_sample = robustness_curve(model, (x, y), [0.0], metric=accuracy)
    scalar = robustness_curve(model, (x, y), [0.0], metric=lambda o, t: (o.argmax(-1) == t).float().mean())
    assert per_sample.values[0] == pytest.approx(scalar.values[0], abs=1e-12)
    assert per_sample.metric == "accuracy"
    soft = F.one_hot(y, 2).float()
    assert robustness_curve(model, (x, soft), [0.0]).values == per_sample.values


def test_result_table_and_dict():
    curve = RobustnessCurve((0.0, 0.5), (0.9, 0.75), 10, "accuracy")
    assert curve.as_dict() == {0.0: 0.9, 0.5: 0.75}
    text = str(curve)
    assert "| noise std | 0 | 0.5 |" in text and "| accuracy | 0.9000 | 0.7500 |" in text


def test_stds_as_tensor():
    model, x, y = linear_problem(100)
    assert robustness_curve(model, (x, y), torch.tensor([0.0, 0.5])).stds == (0.0, 0.5)


def test_errors_name_arguments():
    model, x, y = linear_problem(10)
    for bad in ([-0.1], [float("nan")], ["a"], []):
        with pytest.raises(ValueError, match="stds"):
            robustness_curve(model, (x, y), bad)
    with pytest.raises(TypeError, match="stds"):
        robustness_curve(model, (x, y), 0.5)
    with pytest.raises(ValueError, match="metric"):
        robustness_curve(model, (x, y), [0.0], metric="top5")
    with pytest.raises(TypeError, match="metric"):
        robustness_curve(model, (x, y), [0.0], metric=3)
    with pytest.raises(ValueError, match="metric"):
        robustness_curve(model, (x, y), [0.0], metric=lambda o, t: o)  # [B, 2], neither
    with pytest.raises(TypeError, match="data"):
        robustness_curve(model, x, [0.0])
    with pytest.raises(TypeError, match="data"):
        robustness_curve(model, [x, y, x], [0.0])
    with pytest.raises(ValueError, match="data"):
        robustness_curve(model, [], [0.0])
    with pytest.raises(TypeError, match="generator"):
        robustness_curve(model, (x, y), [0.0], generator=1)


def test_plot_robustness_curves(tmp_path):
    pytest.importorskip("matplotlib")
    a = RobustnessCurve((0.0, 0.5, 1.0), (0.9, 0.8, 0.6), 100)
    b = [RobustnessCurve((0.0, 0.5, 1.0), v, 100) for v in [(0.95, 0.9, 0.8), (0.93, 0.88, 0.74)]]
    path = tmp_path / "robust.png"
    fig = plot.robustness_curve({"baseline": a, "noise": b}, path=path)
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"baseline", "noise (2 runs)"}
    np.testing.assert_allclose(lines["noise (2 runs)"].get_ydata(), [0.94, 0.89, 0.77])
    np.testing.assert_allclose(lines["baseline"].get_xdata(), [0.0, 0.5, 1.0])
    assert len(ax.collections) == 1  # the band of the seeded label
    assert ax.get_ylabel() == "accuracy" and "noise std" in ax.get_xlabel()
    single = plot.robustness_curve(a)
    assert len(single.axes[0].get_lines()) == 1
    with pytest.raises(TypeError, match="curves"):
        plot.robustness_curve({"x": [1, 2]})
    with pytest.raises(TypeError, match="curves"):
        plot.robustness_curve([a])
    with pytest.raises(ValueError, match="stds"):
        plot.robustness_curve({"x": [a, RobustnessCurve((0.0,), (1.0,), 1)]})
