"""The comparison of "High Noise Scheduling is a Must" (Gokmen et al. 2024) at the scale of 8x8 digits: a
factorial sweep with paired seeds, cached per run.

    python examples/compare_schedules.py --jobs 2                  # 5 cells x 10 seeds x 4000 steps
    python examples/comparison_report.py                          # statistics, figures, docs/comparison.md
    python examples/compare_schedules.py --device cuda --width 64 --batch 256 --out runs/comparison-gpu

Five cells, everything else identical (printed by --help and stored in every run's JSON):

  lognormal-ict                     iCT's discrete log-normal levels, iCT's exponential curriculum
  lognormal-sinusoidal              log-normal levels, Gokmen et al.'s sinusoidal curriculum
  polynomial-ict                    Gokmen et al.'s polynomial levels (curve 4), iCT's curriculum
  polynomial-sinusoidal             polynomial levels, sinusoidal curriculum
  polynomial-sinusoidal-predefined  the same with every N's levels taken from one predefined Karras
                                    vector (Gokmen et al.'s "predefined Karras noises", our reading)

The first four are the 2 x 2 factorial distribution x curriculum (levels rebuilt for each N, as iCT
does); the fifth changes only ``predefined_levels``. Each run trains examples/train_consistency.py's
``Run`` (noisefast's ConsistencyNoise, pseudo_huber_loss and EMA) for --steps steps. Seed k gives every
cell the same initial weights, the same data order, the same noise generator seed and the same
sampling noise (train_consistency.derived_seeds): the cells are paired by seed.

Every --eval-every steps the EMA model's 1-step and 2-step samples are scored (--eval-samples
samples; the last point --final-samples): the Frechet distance and the unbiased kernel distance (the
KID recipe) in the feature space of a small digits classifier (NOT FID, NOT KID: not comparable with
published values), with held-out real digits as the floor. Every step's samples are binned by their
noise level sigma_{i+1} (--bins log-spaced bins over [sigma_min, sigma_max]): count, unweighted
pseudo-Huber distance and weighted loss per bin and per --eval-every window (the mechanism).

One JSON per run, <out>/<cell>/seed<k>.json, written when the run ends: its configuration, the loss
every 50 steps, the evaluations, the per-bin statistics, timings. A run whose JSON exists with the same
configuration is skipped, so an interrupted sweep resumes. Runs go seed-major (seed 0 of every cell,
then seed 1, ...), so a partial sweep stays paired and balanced. --jobs N trains N runs at a time in
worker processes of --threads threads each.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402
import train_consistency  # noqa: E402

import noisefast  # noqa: E402

CELLS = {
    "lognormal-ict": {"distribution": "lognormal", "curriculum": "ict", "predefined_levels": False,
                      "label": "log-normal + iCT"},
    "lognormal-sinusoidal": {"distribution": "lognormal", "curriculum": "sinusoidal", "predefined_levels": False,
                             "label": "log-normal + sinusoidal"},
    "polynomial-ict": {"distribution": "polynomial", "curriculum": "ict", "predefined_levels": False,
                       "label": "polynomial + iCT"},
    "polynomial-sinusoidal": {"distribution": "polynomial", "curriculum": "sinusoidal", "predefined_levels": False,
                              "label": "polynomial + sinusoidal"},
    "polynomial-sinusoidal-predefined": {"distribution": "polynomial", "curriculum": "sinusoidal",
                                         "predefined_levels": True,
                                         "label": "polynomial + sinusoidal, predefined levels"},
}
RUN_FORMAT = "noisefast-schedule-sweep/1"
LOSS_EVERY = 50


def build_parser() -> argparse.ArgumentParser:
    d = train_consistency.DEFAULTS
    p = argparse.ArgumentParser(prog="compare_schedules.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=4000, help="training steps of every run")
    p.add_argument("--batch", type=int, default=d["batch"], help="batch size of every run")
    p.add_argument("--width", type=int, default=16, help="UNet channels at 8x8 (multiple of 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=list(range(10)), help="seeds (one run per cell each)")
    p.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS), help="which cells to run")
    p.add_argument("--eval-every", dest="eval_every", type=int, default=500,
                   help="evaluate the EMA model every this many steps (and at the last step)")
    p.add_argument("--eval-samples", dest="eval_samples", type=int, default=1080,
                   help="samples per intermediate evaluation (a multiple of the 360 test images)")
    p.add_argument("--final-samples", dest="final_samples", type=int, default=3600,
                   help="samples of the evaluation at the last step (a multiple of 360)")
    p.add_argument("--bins", type=int, default=16, help="log-spaced noise-level bins of the mechanism statistics")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/comparison", help="directory of the run JSONs")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at a time: 1 trains them one after another in this process; more starts "
                        "that many worker processes")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads per run")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    n_test = digits.N_TEST
    if args.steps <= 0:
        parser.error(f"--steps must be > 0, got {args.steps}")
    if not 2 <= args.batch <= digits.N_TRAIN:
        parser.error(f"--batch must be between 2 and {digits.N_TRAIN}, got {args.batch}")
    if args.width <= 0 or args.width % 8:
        parser.error(f"--width must be a positive multiple of 8, got {args.width}")
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct, got {args.seeds}")
    if len(set(args.cells)) != len(args.cells):
        parser.error(f"--cells must be distinct, got {args.cells}")
    if not 1 <= args.eval_every <= args.steps:
        parser.error(f"--eval-every must be between 1 and --steps ({args.steps}), got {args.eval_every}")
    for name in ("eval_samples", "final_samples"):
        value = getattr(args, name)
        if value < n_test or value % n_test:
            parser.error(f"--{name.replace('_', '-')} must be a positive multiple of {n_test} (the test-set "
                         f"size), got {value}")
    if args.bins < 1:
        parser.error(f"--bins must be >= 1, got {args.bins}")
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    train_consistency.check_device_argument(parser, args.device)
    return args


def run_config(args, cell: str, seed: int) -> dict:
    """Everything that defines one run (the cache key): the training configuration and the evaluation."""
    c = CELLS[cell]
    train_cfg = {**train_consistency.DEFAULTS, "steps": args.steps, "batch": args.batch, "width": args.width,
                 "seed": seed, "distribution": c["distribution"], "curriculum": c["curriculum"],
                 "predefined_levels": c["predefined_levels"]}
    return {"cell": cell, "train": train_cfg, "eval_every": args.eval_every, "eval_samples": args.eval_samples,
            "final_samples": args.final_samples, "bins": args.bins, "device": args.device,
            "sigma_min": digits.SIGMA_MIN, "sigma_max": digits.SIGMA_MAX, "sigma_mid": digits.SIGMA_MID,
            "classifier_version": digits.CLASSIFIER_VERSION}


def run_path(out, cell: str, seed: int) -> Path:
    return Path(out) / cell / f"seed{seed}.json"


def is_done(path: Path, config: dict) -> bool:
    """True when ``path`` holds a finished run of exactly ``config``."""
    if not path.exists():
        return False
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return False
    return saved.get("format") == RUN_FORMAT and saved.get("config") == json.loads(json.dumps(config))


def bin_edges(bins: int) -> np.ndarray:
    """``bins + 1`` log-spaced edges from sigma_min to sigma_max."""
    return np.geomspace(digits.SIGMA_MIN, digits.SIGMA_MAX, bins + 1)


def score(run: train_consistency.Run, classifier, data, reference, train_features: np.ndarray,
          n_samples: int) -> dict:
    """The EMA model's 1-step and 2-step samples, scored; the sampling noise is the run's sampling
    seed at every evaluation (the same z for every cell and every step of a seed)."""
    generator = torch.Generator(device=run.device).manual_seed(run.sample_seed)
    with run.ema.average_parameters(run.model):
        one_step, two_step = digits.sample(run.model, n_samples, generator=generator, device=run.device)
    out = {}
    for key, images in (("one_step", one_step), ("two_step", two_step)):
        m = digits.evaluate_samples(classifier, data, images, reference)
        kid, kid_se = digits.kernel_distance_to_reference(
            digits.classifier_features(classifier, images), train_features, len(data.test_images))
        out[key] = {"frechet_distance": m["frechet_distance"], "kernel_distance": kid, "kernel_distance_se": kid_se,
                    "classes_covered": m["classes_covered"], "class_entropy_bits": m["class_entropy_bits"],
                    "nn_ratio": m["nn_ratio"]}
    return out


def train_and_evaluate(config: dict, cache_dir, *, log=print) -> dict:
    """One run of the sweep (``config`` from :func:`run_config`); returns the JSON-ready record."""
    device = torch.device(config["device"])
    data = digits.load_digits_split()
    classifier, accuracy = digits.load_or_train_classifier(cache_dir, data, log=log)
    reference, floor = digits.reference_floor(classifier, data)
    train_features = digits.classifier_features(classifier, data.train_images)
    test_features = digits.classifier_features(classifier, data.test_images)
    kid_floor = digits.kernel_distance(test_features, train_features)

    cfg = config["train"]
    run = train_consistency.Run(cfg, device, data)
    run.keep_per_sample = True
    edges = torch.tensor(bin_edges(config["bins"]), dtype=torch.float32, device=device)
    inner = edges[1:-1].contiguous()
    nbins = config["bins"]

    def new_window() -> dict:
        return {"count": torch.zeros(nbins, dtype=torch.float64, device=device),
                "distance": torch.zeros(nbins, dtype=torch.float64, device=device),
                "weighted": torch.zeros(nbins, dtype=torch.float64, device=device),
                "loss": 0.0, "steps": 0, "num_levels": set()}

    losses, window_losses, evaluations, windows = [], [], [], []
    window = new_window()
    train_seconds = eval_seconds = 0.0
    diverged_at = None
    cpu_start = time.process_time()
    while run.step < cfg["steps"]:
        started = time.perf_counter()
        window["num_levels"].add(int(run.curriculum.num_levels(run.step)))
        loss = run.train_step()
        per = run.last_per_sample
        which = torch.bucketize(per["sigma_next"], inner)
        window["count"].index_add_(0, which, torch.ones_like(per["distance"], dtype=torch.float64))
        window["distance"].index_add_(0, which, per["distance"].double())
        window["weighted"].index_add_(0, which, (per["distance"] * per["weight"]).double())
        window["loss"] += loss
        window["steps"] += 1
        window_losses.append(loss)
        train_seconds += time.perf_counter() - started
        if not math.isfinite(loss):
            diverged_at = run.step
            log(f"{config['cell']} seed {cfg['seed']}: loss {loss} at step {run.step}; stopping this run")
            break
        if run.step % LOSS_EVERY == 0 or run.step == cfg["steps"]:
            losses.append({"step": run.step, "loss": float(np.mean(window_losses))})
            window_losses.clear()
        if run.step % config["eval_every"] == 0 or run.step == cfg["steps"]:
            windows.append({"end_step": run.step, "steps": window["steps"], "mean_loss": window["loss"] / window["steps"],
                            "num_levels": sorted(window["num_levels"]),
                            **{k: window[k].cpu().tolist() for k in ("count", "distance", "weighted")}})
            window = new_window()
            started = time.perf_counter()
            final = run.step == cfg["steps"]
            evaluation = score(run, classifier, data, reference, train_features,
                               config["final_samples"] if final else config["eval_samples"])
            evaluations.append({"step": run.step, "samples": config["final_samples"] if final else config["eval_samples"],
                                **evaluation})
            eval_seconds += time.perf_counter() - started
    return {
        "format": RUN_FORMAT,
        "config": config,
        "finished": diverged_at is None,
        "diverged_at": diverged_at,
        "final": evaluations[-1] if diverged_at is None else None,
        "evaluations": evaluations,
        "losses": losses,
        "bins": {"edges": bin_edges(config["bins"]).tolist(), "variable": "sigma_next (the student's level)",
                 "windows": windows},
        "reference": {"frechet_distance_test": floor, "kernel_distance_test": kid_floor,
                      "classifier_test_accuracy": accuracy,
                      "note": "Frechet and kernel (KID recipe) distances in the 64-d feature space of a small "
                              "digits classifier: NOT FID or KID, not comparable with published values. The "
                              "_test values are the held-out test images' distances to the training images "
                              "(the floor)."},
        "timing": {"train_seconds": train_seconds, "eval_seconds": eval_seconds,
                   "cpu_seconds": time.process_time() - cpu_start, "torch_threads": torch.get_num_threads()},
        "machine": {"platform": platform.platform(), "processor": platform.machine(), "torch": torch.__version__,
                    "noisefast": noisefast.__version__},
    }


def write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)       # never leave a half-written run behind


def _worker(config: dict, out: str, threads: int) -> str:
    torch.set_num_threads(threads)
    record = train_and_evaluate(config, out, log=lambda *a, **k: None)
    path = run_path(out, config["cell"], config["train"]["seed"])
    write_json(path, record)
    return str(path)


def plan(args) -> List[dict]:
    """The configurations still to run, seed-major."""
    return [run_config(args, cell, seed) for seed in args.seeds for cell in args.cells
            if not is_done(run_path(args.out, cell, seed), run_config(args, cell, seed))]


def main(argv=None) -> int:
    args = parse_args(argv)
    log = (lambda *a, **k: None) if args.quiet else (lambda *a, **k: print(*a, **k, flush=True))
    todo = plan(args)
    total = len(args.seeds) * len(args.cells)
    log(f"{total} runs ({len(args.cells)} cells x {len(args.seeds)} seeds), {total - len(todo)} already done, "
        f"{len(todo)} to run, {args.jobs} at a time; runs in {args.out}/<cell>/seed<k>.json")
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        # The feature classifier, trained once before the runs that would all want it.
        digits.load_or_train_classifier(args.out, digits.load_digits_split(), log=log)
        started, done = time.perf_counter(), 0

        def finished(config: dict, path: str) -> None:
            nonlocal done
            done += 1
            record = json.loads(Path(path).read_text())
            final = record["final"]
            fd = "diverged" if final is None else f"Frechet 1-step {final['one_step']['frechet_distance']:.2f}"
            elapsed = time.perf_counter() - started
            log(f"[{done}/{len(todo)}] {config['cell']} seed {config['train']['seed']}: {fd}, "
                f"train {record['timing']['train_seconds']:.0f} s + eval {record['timing']['eval_seconds']:.0f} s; "
                f"{elapsed / 60:.1f} min elapsed, about {elapsed / done * (len(todo) - done) / 60:.0f} min left")

        if args.jobs == 1:
            for config in todo:
                finished(config, _worker(config, args.out, args.threads))
        elif todo:
            context = multiprocessing.get_context("spawn")      # no fork of a process that ran OpenMP
            with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                futures = {pool.submit(_worker, config, args.out, args.threads): config for config in todo}
                for future in concurrent.futures.as_completed(futures):
                    finished(futures[future], future.result())
    finally:
        torch.set_num_threads(before)
    log(f"all {total} runs in {args.out}; report with: python examples/comparison_report.py --runs {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
