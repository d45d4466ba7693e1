"""Tests of the schedule sweep (examples/compare_schedules.py) and its report
(examples/comparison_report.py): a 2-seed, few-step smoke version of the whole sweep, resume, the
paired statistics, the kernel distance and the per-sample record of train_consistency.Run.

Tiny sizes (a width-8 UNet, batch 8, a few steps, an untrained feature classifier) keep it short.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

import compare_schedules  # noqa: E402
import comparison_report  # noqa: E402
import digits  # noqa: E402
import train_consistency  # noqa: E402

TINY = ["--steps", "4", "--eval-every", "2", "--width", "8", "--batch", "8", "--eval-samples", "360",
        "--final-samples", "720", "--bins", "4", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _untrained_classifier(directory: Path) -> None:
    """An untrained classifier in the cache, so no test spends time training one."""
    directory.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = digits.DigitsClassifier().state_dict()
    torch.save({"version": digits.CLASSIFIER_VERSION, "state_dict": state, "test_accuracy": 0.1},
               directory / digits.CLASSIFIER_FILE)


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--seeds", "1", "1"], "--seeds must be distinct"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
    (["--cells", "lognormal-cosine"], "invalid choice: 'lognormal-cosine'"),
    (["--width", "12"], "--width must be a positive multiple of 8"),
    (["--steps", "10", "--eval-every", "11"], "--eval-every must be between 1 and --steps (10)"),
    (["--eval-samples", "500"], "--eval-samples must be a positive multiple of 360"),
    (["--final-samples", "0"], "--final-samples must be a positive multiple of 360"),
    (["--bins", "0"], "--bins must be >= 1"),
    (["--batch", "1"], "--batch must be between 2 and"),
])
def test_bad_arguments(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as info:
        compare_schedules.main(argv + ["--out", str(tmp_path / "runs")])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()      # nothing written


def test_cells_differ_only_in_their_own_fields_and_order_is_seed_major():
    args = compare_schedules.parse_args(["--seeds", "3", "5"])
    configs = [compare_schedules.run_config(args, cell, seed) for seed in args.seeds for cell in args.cells]
    own = {"seed", "distribution", "curriculum", "predefined_levels"}
    first = configs[0]
    for config in configs:
        assert {k: v for k, v in config["train"].items() if k not in own} == \
               {k: v for k, v in first["train"].items() if k not in own}
        assert {k: v for k, v in config.items() if k not in ("train", "cell")} == \
               {k: v for k, v in first.items() if k not in ("train", "cell")}
    cells = [(c["cell"], c["train"]["seed"]) for c in configs]
    assert cells[:5] == [(cell, 3) for cell in compare_schedules.CELLS] and cells[5][1] == 5
    # The fifth cell changes only predefined_levels against polynomial + sinusoidal.
    a, b = (compare_schedules.run_config(args, c, 3)["train"]
            for c in ("polynomial-sinusoidal", "polynomial-sinusoidal-predefined"))
    assert {k for k in a if a[k] != b[k]} == {"predefined_levels"}
    assert args.steps >= 4000 and len(args.seeds) == 2 and compare_schedules.parse_args([]).seeds == list(range(10))
    # Paired: one seed gives every cell the same initial weights and the same data order.
    data = digits.load_digits_split()
    small = compare_schedules.parse_args(["--width", "8", "--batch", "8"])
    one, two = (train_consistency.Run(compare_schedules.run_config(small, c, 3)["train"], torch.device("cpu"), data)
                for c in ("lognormal-ict", "polynomial-sinusoidal-predefined"))
    for p, q in zip(one.model.parameters(), two.model.parameters()):
        assert torch.equal(p, q)
    assert all(torch.equal(one.order.next(), two.order.next()) for _ in range(3))
    assert one.sample_seed == two.sample_seed


def test_smoke_sweep_resume_and_report(tmp_path, capsys):
    """The whole pipeline at 2 seeds and 4 steps: 10 runs, a resume that runs nothing, a changed
    configuration that runs again, and the report with its figures and tables."""
    runs = tmp_path / "runs"
    _untrained_classifier(runs)
    compare_schedules.main(TINY + ["--seeds", "0", "1", "--out", str(runs)])
    paths = sorted(runs.glob("*/seed*.json"))
    assert len(paths) == 10
    record = json.loads((runs / "polynomial-sinusoidal-predefined" / "seed1.json").read_text())
    assert record["finished"] and record["config"]["train"]["predefined_levels"] is True
    assert [e["step"] for e in record["evaluations"]] == [2, 4]
    assert [e["samples"] for e in record["evaluations"]] == [360, 720]
    assert [w["end_step"] for w in record["bins"]["windows"]] == [2, 4]
    assert all(sum(w["count"]) == 2 * 8 for w in record["bins"]["windows"])
    assert [item["step"] for item in record["losses"]] == [4]
    for key in ("one_step", "two_step"):
        m = record["final"][key]
        assert math.isfinite(m["frechet_distance"]) and m["frechet_distance"] >= 0
        assert math.isfinite(m["kernel_distance"]) and m["kernel_distance_se"] >= 0
    mtimes = {p: p.stat().st_mtime_ns for p in paths}
    capsys.readouterr()
    compare_schedules.main(TINY[:-1] + ["--seeds", "0", "1", "--out", str(runs)])
    assert "10 already done, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in paths} == mtimes
    args = compare_schedules.parse_args(TINY + ["--seeds", "0", "1", "--steps", "6", "--out", str(runs)])
    assert len(compare_schedules.plan(args)) == 10        # another configuration is not reused

    output = tmp_path / "comparison.md"
    output.write_text("# Title\n\nhand-written text\n\n" + comparison_report.BEGIN + "\nold\n"
                      + comparison_report.END + "\n\nmore text\n")
    comparison_report.main(["--runs", str(runs), "--output", str(output), "--images", str(tmp_path / "img")])
    text = output.read_text()
    assert text.startswith("# Title\n\nhand-written text\n\n") and text.endswith("\n\nmore text\n")
    assert "\nold\n" not in text
    assert "| log-normal + iCT |" in text and "| polynomial + sinusoidal, predefined levels |" in text
    assert "2 paired seeds: 0, 1" in text
    assert "| polynomial + iCT - log-normal + iCT | distribution, under iCT's curriculum |" in text
    for name in ("comparison_curves.png", "comparison_mechanism.png"):
        assert (tmp_path / "img" / name).stat().st_size > 10_000


def test_report_pairs_seeds_and_lists_the_rest(tmp_path, capsys):
    runs = tmp_path / "runs"
    _untrained_classifier(runs)
    compare_schedules.main(TINY + ["--seeds", "0", "1", "--cells", "lognormal-ict", "polynomial-ict",
                                   "--out", str(runs), "--jobs", "2"])
    (runs / "polynomial-ict" / "seed1.json").unlink()
    loaded = comparison_report.load_runs(runs)
    assert list(loaded) == ["lognormal-ict", "polynomial-ict"]
    assert comparison_report.paired_seeds(loaded) == [0]
    comparison_report.main(["--runs", str(runs), "--output", str(tmp_path / "r.md"), "--images", str(tmp_path)])
    text = (tmp_path / "r.md").read_text()
    assert "Left out (not finished in every cell): log-normal + iCT: seeds 1." in text
    # A run of another configuration in the same directory is refused.
    other = json.loads((runs / "lognormal-ict" / "seed1.json").read_text())
    other["config"]["train"]["lr"] = 1.0
    (runs / "lognormal-ict" / "seed1.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as info:
        comparison_report.main(["--runs", str(runs), "--output", str(tmp_path / "r.md")])
    assert info.value.code == 2 and "runs differ in more than the cell" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        comparison_report.main(["--runs", str(tmp_path / "nothing")])


def test_paired_statistics():
    a = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    d = comparison_report.paired_difference(a, a + 1)
    assert d["median"] == -1.0 and d["ci"] == (-1.0, -1.0) and d["a_better"] == 5 and d["b_better"] == 0
    d = comparison_report.paired_difference(2 * a, a)
    assert d["ratio"] == pytest.approx(2.0) and d["ratio_ci"] == pytest.approx((2.0, 2.0))
    assert d["median"] == 3.0 and d["ci"][0] <= 3.0 <= d["ci"][1] and d["a_better"] == 0
    d = comparison_report.paired_difference([1.0, float("inf")], [2.0, 3.0])
    assert "median" not in d and "ratio" not in d and d["a_better"] == 1 and d["b_better"] == 1
    assert comparison_report.median_iqr([1, 2, 3, 4, 5]) == (3.0, 2.0, 4.0)
    # The bootstrap interval of a median covers it, and is reproducible.
    x = np.random.default_rng(1).normal(size=8)
    lo, hi = comparison_report.bootstrap_ci(x, lambda v: np.median(v, axis=1))
    assert lo <= np.median(x) <= hi
    assert (lo, hi) == comparison_report.bootstrap_ci(x, lambda v: np.median(v, axis=1))


def test_kernel_distance_against_a_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(7, 3)), rng.normal(loc=0.5, size=(5, 3))

    def k(a, b):
        return (a @ b / 3 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(7) for j in range(7) if i != j) / (7 * 6)
    yy = sum(k(y[i], y[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    xy = sum(k(x[i], y[j]) for i in range(7) for j in range(5)) / (7 * 5)
    assert digits.kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    # Unbiased: about 0 between samples of one distribution, clearly positive between different ones.
    same = [digits.kernel_distance(rng.normal(size=(50, 4)), rng.normal(size=(60, 4))) for _ in range(200)]
    shifted = digits.kernel_distance(rng.normal(size=(500, 4)), rng.normal(loc=1.0, size=(500, 4)))
    assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same)) + 1e-3
    assert shifted > 10 * np.std(same)
    mean, se = digits.kernel_distance_to_reference(rng.normal(size=(30, 4)), rng.normal(size=(40, 4)), 10)
    assert se > 0 and math.isfinite(mean)
    with pytest.raises(ValueError, match="at least 2 samples"):
        digits.kernel_distance(x[:1], y)
    with pytest.raises(ValueError, match="at least 10 samples"):
        digits.kernel_distance_to_reference(x, y, 10)


def test_run_keeps_per_sample_losses_only_when_asked():
    data = digits.load_digits_split()
    cfg = {**train_consistency.DEFAULTS, "width": 8, "batch": 8, "steps": 10, "warmup": 2}
    run = train_consistency.Run(cfg, torch.device("cpu"), data)
    run.train_step()
    assert run.last_per_sample is None
    run.keep_per_sample = True
    loss = run.train_step()
    per = run.last_per_sample
    assert per["sigma_next"].shape == per["distance"].shape == per["weight"].shape == (8,)
    assert (per["distance"] >= 0).all() and (per["sigma_next"] > 0).all()
    assert (per["weight"] * per["distance"]).mean().item() == pytest.approx(loss, rel=1e-5)
