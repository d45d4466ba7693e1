"""Tests of the consistency-training example (examples/train_consistency.py, examples/digits.py):
exact resume, argument errors, the metrics and sampling (the schedule sweep: tests/test_compare_schedules.py).

Everything runs at a tiny size (a width-8 UNet, batch 8, a few steps) to stay well under a minute.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# The example needs scikit-learn (the data) and tqdm, optional on the GPU machine (gpu.md).
pytest.importorskip("sklearn")
pytest.importorskip("tqdm")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import digits  # noqa: E402
import train_consistency  # noqa: E402

@pytest.fixture(autouse=True)
def _one_thread():
    """The tiny models here are dominated by thread start-up and synchronisation, which on a busy
    shared machine costs more than the arithmetic: run them on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TINY = ["--batch", "8", "--width", "8", "--warmup", "2", "--checkpoint-every", "0", "--quiet"]


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_equal_nested(a, b, where="state"):
    """torch.equal on every tensor of two nested dict/list structures, == on everything else."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            _assert_equal_nested(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("distribution,curriculum", [("lognormal", "ict"), ("polynomial", "sinusoidal")])
def test_resume_is_bit_exact(tmp_path, distribution, curriculum):
    common = TINY + ["--steps", "6", "--no-eval", "--out", str(tmp_path),
                     "--distribution", distribution, "--curriculum", curriculum]
    assert train_consistency.main(common + ["--name", "straight"]) == 0
    assert train_consistency.main(common + ["--name", "resumed", "--stop-at", "3"]) == 0
    halfway = _load(tmp_path / "resumed" / "checkpoint.pt")
    assert halfway["step"] == 3
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["completed_steps"] == 3 and not metrics["finished"]
    # Resume: the configuration comes from the checkpoint, only the name and output dir are given.
    assert train_consistency.main(["--out", str(tmp_path), "--name", "resumed", "--resume", "--quiet",
                                   "--checkpoint-every", "0", "--no-eval"]) == 0

    straight = _load(tmp_path / "straight" / "checkpoint.pt")
    resumed = _load(tmp_path / "resumed" / "checkpoint.pt")
    assert straight["step"] == resumed["step"] == 6
    for key in ("model", "ema", "optimizer", "noise_generator", "data_order", "torch_rng", "history"):
        _assert_equal_nested(straight[key], resumed[key], key)
    # The test can fail: the three resumed steps changed the model and its EMA.
    assert not all(torch.equal(a, b) for a, b in zip(halfway["model"].values(), resumed["model"].values()))
    assert not torch.equal(halfway["noise_generator"], resumed["noise_generator"])


def test_different_seed_gives_different_run(tmp_path):
    common = TINY + ["--steps", "2", "--no-eval", "--out", str(tmp_path)]
    train_consistency.main(common + ["--name", "a", "--seed", "0"])
    train_consistency.main(common + ["--name", "b", "--seed", "1"])
    a, b = _load(tmp_path / "a" / "checkpoint.pt"), _load(tmp_path / "b" / "checkpoint.pt")
    assert not torch.equal(a["model"]["net.conv_out.weight"], b["model"]["net.conv_out.weight"])


@pytest.mark.parametrize("argv,message", [
    (["--distribution", "gamma"], "invalid choice: 'gamma'"),
    (["--curriculum", "cosine"], "invalid choice: 'cosine'"),
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--steps", "-3"], "--steps must be > 0, got -3"),
    (["--steps", "ten"], "invalid int value: 'ten'"),
    (["--batch", "1"], "--batch must be between 2 and"),
    (["--batch", "5000"], "--batch must be between 2 and"),
    (["--ema-decay", "1.0"], "--ema-decay must be in [0, 1)"),
    (["--constant-n", "1"], "--constant-n must be >= 2"),
    (["--width", "12"], "--width must be a positive multiple of 8"),
    (["--curve", "0"], "--curve must be > 0"),
    (["--steps", "5", "--stop-at", "6"], "--stop-at must be between 1 and --steps (5)"),
    (["--eval-samples", "10"], "--eval-samples must be >= 360"),
    (["--device", "nonsense"], "--device: unknown device"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_bad_arguments_exit_with_a_clear_message(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        train_consistency.main(argv + ["--out", str(tmp_path), "--quiet"])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())     # nothing written


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_cuda_requested_without_cuda(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_consistency.main(["--device", "cuda", "--out", str(tmp_path), "--quiet"])
    assert info.value.code == 2 and "--device cuda: CUDA is not available here" in capsys.readouterr().err


def test_resume_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        train_consistency.main(["--out", str(tmp_path), "--name", "none", "--resume"])
    assert info.value.code == 2 and "--resume: no checkpoint at" in capsys.readouterr().err
    train_consistency.main(TINY + ["--steps", "4", "--stop-at", "1", "--no-eval", "--out", str(tmp_path),
                                   "--name", "r"])
    with pytest.raises(SystemExit) as info:
        train_consistency.main(["--out", str(tmp_path), "--name", "r", "--resume", "--steps", "8"])
    assert info.value.code == 2
    assert "--steps 8 differs from the checkpoint's 4" in capsys.readouterr().err


def test_end_to_end_with_evaluation(tmp_path):
    """Two steps, then sampling, metrics and samples.png. An untrained classifier is put in the cache
    first so the test does not spend time training one."""
    data = digits.load_digits_split()
    torch.manual_seed(0)
    torch.save({"version": digits.CLASSIFIER_VERSION, "state_dict": digits.DigitsClassifier().state_dict(),
                "test_accuracy": 0.1}, tmp_path / digits.CLASSIFIER_FILE)
    train_consistency.main(["--steps", "2", "--batch", "8", "--curriculum", "constant", "--constant-n", "11",
                            "--out", str(tmp_path), "--name", "e2e", "--eval-samples", "360", "--quiet"])
    run_dir = tmp_path / "e2e"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "samples.png").stat().st_size > 1000
    assert metrics["finished"] and metrics["config"]["constant_n"] == 11
    assert all(h["num_levels"] == 11 for h in metrics["history"])
    for key in ("one_step", "two_step"):
        m = metrics[key]
        assert math.isfinite(m["frechet_distance"]) and m["frechet_distance"] >= 0
        assert 1 <= m["classes_covered"] <= 10
        assert m["nn_ratio"] > 0
    assert "NOT FID" in metrics["reference"]["note"]
    assert len(data.train_images) == 1437 and len(data.test_images) == 360


# --------------------------------------------------------------------------------------------------
# The pieces

def test_data_split_and_scaling():
    data = digits.load_digits_split()
    assert data.train_images.shape == (1437, 1, 8, 8) and data.test_images.shape == (360, 1, 8, 8)
    both = torch.cat([data.train_images, data.test_images])
    assert both.min().item() == -1.0 and both.max().item() == 1.0
    # Values are k/8 - 1 for integers k in 0..16.
    assert torch.equal((both + 1) * 8, ((both + 1) * 8).round())
    assert set(data.test_labels.tolist()) == set(range(10))


def test_data_order_epochs_and_state():
    order = digits.DataOrder(10, 3, seed=0)
    epoch = torch.cat([order.next() for _ in range(3)])
    assert len(set(epoch.tolist())) == 9                     # no repeats inside an epoch
    state = order.state_dict()
    expected = [order.next() for _ in range(4)]              # crosses into the next epoch
    other = digits.DataOrder(10, 3, seed=123)
    other.load_state_dict(state)
    for want in expected:
        assert torch.equal(other.next(), want)
    with pytest.raises(ValueError, match="batch_size"):
        digits.DataOrder(10, 11, seed=0)


def test_frechet_distance_against_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    cov = a @ a.T + 0.1 * np.eye(6)
    mu = rng.normal(size=6)
    assert abs(digits.frechet_distance(mu, cov, mu, cov)) < 1e-9
    # Diagonal covariances: ||mu1 - mu2||^2 + sum (sqrt(v1) - sqrt(v2))^2.
    v1, v2 = rng.uniform(0.1, 2, 6), rng.uniform(0.1, 2, 6)
    mu2 = rng.normal(size=6)
    want = ((mu - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert digits.frechet_distance(mu, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)
    # General covariances: against scipy's matrix square root.
    scipy_linalg = pytest.importorskip("scipy.linalg")
    b = rng.normal(size=(6, 6))
    cov2 = b @ b.T + 0.1 * np.eye(6)
    want = ((mu - mu2) ** 2).sum() + np.trace(cov + cov2 - 2 * scipy_linalg.sqrtm(cov @ cov2).real)
    assert digits.frechet_distance(mu, cov, mu2, cov2) == pytest.approx(want, rel=1e-8)


def test_nearest_neighbour_check_flags_copies():
    data = digits.load_digits_split()
    copies = digits.nearest_neighbour_check(data.train_images[:200], data.train_images, data.test_images)
    assert copies["nn_ratio"] == 0.0 and copies["frac_samples_below_test_p05"] == 1.0
    real = digits.nearest_neighbour_check(data.test_images, data.train_images, data.test_images)
    assert real["nn_ratio"] == 1.0 and real["frac_samples_below_test_p05"] == pytest.approx(0.05, abs=0.01)
    noise = torch.rand(200, 1, 8, 8) * 2 - 1
    assert digits.nearest_neighbour_check(noise, data.train_images, data.test_images)["nn_ratio"] > 1.5


def test_consistency_model_boundary_and_sampling():
    torch.manual_seed(0)
    model = digits.ConsistencyModel(width=8)
    x = torch.randn(5, 1, 8, 8)
    # f(x, sigma_min) = x: the boundary condition of the parameterisation.
    assert torch.equal(model(x, torch.full((5,), digits.SIGMA_MIN)), x)
    one, two = digits.sample(model, 7, generator=torch.Generator().manual_seed(1), device="cpu", batch_size=4)
    assert one.shape == two.shape == (7, 1, 8, 8)
    assert one.abs().max() <= 1 and two.abs().max() <= 1
    again, _ = digits.sample(model, 7, generator=torch.Generator().manual_seed(1), device="cpu", batch_size=4)
    assert torch.equal(one, again)
