"""The comparison of "High Noise Scheduling is a Must" (Gokmen et al. 2024) at the scale of 8x8 digits.

    python examples/compare_schedules.py                      # 3 schedules x 3 seeds, default steps
    python examples/compare_schedules.py --steps 1000 --seeds 0 1 --output docs/comparison.md

Trains examples/train_consistency.py once per schedule and seed, with the same steps, batch, model
and everything else:

  lognormal + ict          iCT's discrete log-normal levels with iCT's exponential curriculum (baseline)
  polynomial + constant    Gokmen et al.'s polynomial levels (curve 4) with a constant N
  polynomial + sinusoidal  polynomial levels (curve 4) with the sinusoidal curriculum

The polynomial rows take their levels from one predefined Karras vector (Gokmen et al.'s
"predefined Karras noises", our reading; see noisefast.KarrasLevels), as the paper pairs them.

and writes a markdown table of the mean and spread (sample standard deviation over seeds) of the
metrics, the per-seed values, and the command that reproduces it. The Frechet distance is measured
in the feature space of a small digits classifier: it is NOT FID. Whatever the numbers say is what
the file says; nothing is tuned per schedule.

Runs go to <out>/compare-<schedule>-seed<k>/ (--jobs N trains N at a time); --reuse skips runs whose finished metrics.json has the
same configuration (to continue an interrupted comparison).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import os
import json
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402
import train_consistency  # noqa: E402

SCHEDULES = {
    "lognormal-ict": {"distribution": "lognormal", "curriculum": "ict", "predefined_levels": False,
                      "label": "log-normal + iCT curriculum (baseline)"},
    "polynomial-constant": {"distribution": "polynomial", "curriculum": "constant", "predefined_levels": True,
                            "label": "polynomial (curve 4) + constant N"},
    "polynomial-sinusoidal": {"distribution": "polynomial", "curriculum": "sinusoidal", "predefined_levels": True,
                              "label": "polynomial (curve 4) + sinusoidal curriculum"},
}

# (metrics.json path, column title, format)
COLUMNS = (
    (("one_step", "frechet_distance"), "Frechet dist. 1-step", "{:.2f}"),
    (("two_step", "frechet_distance"), "Frechet dist. 2-step", "{:.2f}"),
    (("one_step", "classes_covered"), "classes 1-step", "{:.1f}"),
    (("one_step", "nn_ratio"), "NN ratio 1-step", "{:.3f}"),
    (("two_step", "nn_ratio"), "NN ratio 2-step", "{:.3f}"),
    (("final_loss",), "final loss", "{:.3g}"),
    (("train_seconds",), "train s", "{:.0f}"),
)


def build_parser() -> argparse.ArgumentParser:
    d = train_consistency.DEFAULTS
    p = argparse.ArgumentParser(prog="compare_schedules.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=d["steps"], help="training steps of every run")
    p.add_argument("--batch", type=int, default=d["batch"], help="batch size of every run")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds (one run each per schedule)")
    p.add_argument("--constant-n", dest="constant_n", type=int, default=d["constant_n"],
                   help="N of the constant-N schedule")
    p.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES),
                   help="which schedules to run")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs", help="directory of the runs")
    p.add_argument("--output", default="docs/comparison.md", help="the markdown file to write")
    p.add_argument("--eval-samples", dest="eval_samples", type=int, default=1080)
    p.add_argument("--reuse", action="store_true",
                   help="reuse finished runs with the same configuration instead of training again")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time: 1 trains them one after another in this process; more "
                        "starts that many subprocesses, each with cpu_count/jobs threads")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.steps <= 0:
        parser.error(f"--steps must be > 0, got {args.steps}")
    if args.batch < 2:
        parser.error(f"--batch must be >= 2, got {args.batch}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.constant_n < 2:
        parser.error(f"--constant-n must be >= 2, got {args.constant_n}")
    return args


def reproduce_command(args) -> str:
    parts = ["python", "examples/compare_schedules.py", "--steps", str(args.steps), "--batch", str(args.batch),
             "--seeds", *map(str, args.seeds), "--constant-n", str(args.constant_n)]
    if args.schedules != list(SCHEDULES):
        parts += ["--schedules", *args.schedules]
    if args.device != "cpu":
        parts += ["--device", args.device]
    if args.eval_samples != 1080:
        parts += ["--eval-samples", str(args.eval_samples)]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    parts += ["--output", args.output]
    return shlex.join(parts)


def run_argv(args, key: str, seed: int) -> list:
    s = SCHEDULES[key]
    argv = ["--steps", str(args.steps), "--batch", str(args.batch), "--seed", str(seed),
            "--distribution", s["distribution"], "--curriculum", s["curriculum"],
            "--constant-n", str(args.constant_n), "--device", args.device, "--out", args.out,
            "--name", f"compare-{key}-seed{seed}", "--eval-samples", str(args.eval_samples),
            "--predefined-levels" if s["predefined_levels"] else "--no-predefined-levels"]
    return argv + (["--quiet"] if args.quiet else [])


def _reusable(path: Path, args, key: str, seed: int) -> bool:
    if not path.exists():
        return False
    metrics = json.loads(path.read_text())
    cfg = metrics.get("config", {})
    want = {"steps": args.steps, "batch": args.batch, "seed": seed, "constant_n": args.constant_n,
            "distribution": SCHEDULES[key]["distribution"], "curriculum": SCHEDULES[key]["curriculum"],
            "predefined_levels": SCHEDULES[key]["predefined_levels"]}
    return metrics.get("finished") and "one_step" in metrics and all(cfg.get(k) == v for k, v in want.items())


def _get(metrics: dict, path: tuple):
    for part in path:
        metrics = metrics[part]
    return float(metrics)


def _mean_spread(values, fmt: str) -> str:
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.mean(values))} ± {fmt.format(statistics.stdev(values))}"


def markdown(args, results: dict, floor: float, accuracy: float) -> str:
    threads = "/".join(str(t) for t in sorted({m.get("torch_threads") for runs in results.values()
                                                 for m in runs.values()}))
    lines = [
        "# Noise schedules for consistency training at the scale of 8x8 digits",
        "",
        "The comparison of Gokmen et al. 2024 (\"High Noise Scheduling is a Must\", arXiv 2404.06353),",
        "repeated with `examples/train_consistency.py` (iCT on scikit-learn's 8x8 digits, a small UNet,",
        f"{args.steps} steps of batch {args.batch}, the same for every run; seeds {', '.join(map(str, args.seeds))}).",
        "Only the level distribution and the curriculum change between rows.",
        "",
        "Metrics of the EMA model's samples "
        f"({args.eval_samples} samples; mean ± sample standard deviation over {len(args.seeds)} seeds):",
        "",
        "- **Frechet dist.**: Frechet distance between the samples and the training images in the 64-d",
        "  feature space of a small digits classifier that the example trains (test accuracy",
        f"  {accuracy:.3f}). **This is not FID** and is not comparable with FID values. Lower is better;",
        f"  held-out real test images score **{floor:.2f}** (the floor). It is averaged over chunks of",
        "  360 samples, the size of the test set, so the floor and the samples have the same bias.",
        "- **classes**: how many of the 10 digit classes the classifier finds among the samples.",
        "- **NN ratio**: median distance of samples to their nearest training image divided by the",
        "  same for held-out test images; well below 1 would mean copying of training images.",
        "- **final loss**: the training loss over the last 50 steps (not comparable across level",
        "  distributions and curricula: the weights 1/(sigma_(i+1) - sigma_i) differ).",
        "",
    ]
    header = ["schedule"] + [title for _, title, _ in COLUMNS]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, runs in results.items():
        row = [SCHEDULES[key]["label"]]
        for path, _, fmt in COLUMNS:
            row.append(_mean_spread([_get(m, path) for m in runs.values()], fmt))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Per seed (Frechet dist. 1-step / 2-step):", "",
              "| schedule | " + " | ".join(f"seed {s}" for s in args.seeds) + " |",
              "|" + "---|" * (len(args.seeds) + 1)]
    for key, runs in results.items():
        cells = [f"{_get(runs[s], ('one_step', 'frechet_distance')):.2f} / "
                 f"{_get(runs[s], ('two_step', 'frechet_distance')):.2f}" for s in args.seeds]
        lines.append(f"| {SCHEDULES[key]['label']} | " + " | ".join(cells) + " |")
    best = min(results, key=lambda k: statistics.mean(_get(m, ("one_step", "frechet_distance"))
                                                      for m in results[k].values()))
    all_fd = [_get(m, ("one_step", "frechet_distance")) for runs in results.values() for m in runs.values()]
    threshold = 3 * min(all_fd)
    poor = {key: sum(_get(m, ("one_step", "frechet_distance")) > threshold for m in runs.values())
            for key, runs in results.items()}
    lines += [
        "",
        "Settings: Karras levels sigma in [0.002, 80], rho 7; log-normal P_mean -1.1, P_std 2.0; iCT",
        "curriculum s0 10, s1 1280 (N doubles every K/8 steps); sinusoidal s0 20, s1 250; constant",
        f"N = {args.constant_n}; polynomial rows with predefined Karras levels (one vector for the",
        "curriculum's largest N); per-sample pseudo-Huber loss with c = 0.00054 sqrt(64) and weight",
        f"1/(sigma_(i+1) - sigma_i); Adam, learning rate {train_consistency.DEFAULTS['lr']} after "
        f"{train_consistency.DEFAULTS['warmup']} warm-up steps; EMA",
        f"decay min({train_consistency.DEFAULTS['ema_decay']}, 1 - (1 + u)^-0.75) after u updates; "
        "2-step sampling via sigma = 0.821.",
        "",
        f"Lowest mean 1-step Frechet distance here: {SCHEDULES[best]['label']}. Runs whose 1-step",
        f"Frechet distance is more than 3 times the best run's ({threshold:.1f}): "
        + "; ".join(f"{SCHEDULES[k]['label']}: {n} of {len(results[k])}" for k, n in poor.items()) + ".",
        "Read the spread before the means: with a few seeds and short runs, differences smaller than",
        "about two standard deviations are not evidence either way, and results at this scale need",
        "not carry over to CIFAR-10 (the paper's setting) or to longer training. At this length the",
        f"iCT curriculum doubles N every {args.steps // 8} steps and spends the last {args.steps // 8} "
        "steps at N = 1281, while the",
        "sinusoidal curriculum stays between 20 and 250 levels and the constant one at "
        f"{args.constant_n}.",
        "",
        f"Machine: {platform.machine()}, {args.device}, torch {torch.__version__}, "
        f"{threads} thread(s) per run; training time of all runs "
        f"{sum(m['train_seconds'] for runs in results.values() for m in runs.values()) / 60:.0f} min; "
        f"{datetime.date.today().isoformat()}.",
        "",
        "Reproduce:",
        "",
        "```",
        reproduce_command(args),
        "```",
        "",
    ]
    return "\n".join(lines)


def _run_in_subprocess(argv: list, log_path: Path) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve().parent / "train_consistency.py"),
                               *argv], stdout=log, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise RuntimeError(f"run failed (exit {done.returncode}): {shlex.join(argv)}; see {log_path}")


def main(argv=None) -> int:
    args = parse_args(argv)
    todo = []
    for key in args.schedules:
        for seed in args.seeds:
            metrics_path = Path(args.out) / f"compare-{key}-seed{seed}" / "metrics.json"
            if not (args.reuse and _reusable(metrics_path, args, key, seed)):
                todo.append((key, seed))
    if args.jobs == 1:
        for key, seed in todo:
            print(f"\n== {SCHEDULES[key]['label']}, seed {seed}", flush=True)
            train_consistency.main(run_argv(args, key, seed))
    elif todo:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        # Train the shared feature classifier once, before the runs that would all want it, with
        # the runs' thread count (the result depends on it in the last bits).
        torch.set_num_threads(threads)
        digits.load_or_train_classifier(args.out, digits.load_digits_split())
        print(f"{len(todo)} runs, {args.jobs} at a time with {threads} thread(s) each; logs in "
              f"{args.out}/compare-*/log.txt", flush=True)
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            futures = {pool.submit(_run_in_subprocess,
                                   run_argv(args, key, seed) + ["--threads", str(threads), "--quiet"],
                                   Path(args.out) / f"compare-{key}-seed{seed}" / "log.txt"): (key, seed)
                       for key, seed in todo}
            for future in concurrent.futures.as_completed(futures):
                future.result()
                key, seed = futures[future]
                print(f"finished {SCHEDULES[key]['label']}, seed {seed}", flush=True)
    results = {key: {seed: json.loads((Path(args.out) / f"compare-{key}-seed{seed}" / "metrics.json").read_text())
                     for seed in args.seeds} for key in args.schedules}
    any_run = next(iter(next(iter(results.values())).values()))
    text = markdown(args, results, any_run["reference"]["frechet_distance_test"],
                    any_run["reference"]["classifier_test_accuracy"])
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    print("\n" + text)
    print(f"wrote {output}; reproduce with:\n  {reproduce_command(args)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
