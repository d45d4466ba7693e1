"""Noise regularisers and robustness: train a small digits classifier with each regulariser and
measure its accuracy under test-time Gaussian input noise; then compare three ways of injecting the
same input noise (on every batch, every k-th epoch, adaptive) while a RobustnessTracker follows
the robustness curve on held-out data during training.

    python examples/robustness.py            # 3 seeds: docs/robustness.md, docs/images/robustness*.png
    python examples/robustness.py --quick    # 1 seed, a few epochs (a smoke test: seconds)
    python examples/robustness.py --only injection   # just the injection comparison

Data: scikit-learn's 8x8 digits scaled to [-1, 1] (examples/digits.py, no download), 1437 training
and 360 test images. Model: an MLP 64-256-256-10. Each recipe trains with Adam for the same number of
steps from the same initialisation per seed; robustness is then measured with
``noisefast.robustness.robustness_curve`` (inputs x + std * z, z ~ N(0, 1)) at every test std.

The recipes are the entries of REGULARISERS: each says how to build the network, how to compute a
batch's loss and what to do after backward, so a new regulariser is one more entry.

The injection comparison (INJECTION) trains on 1150 of the training images and tracks the accuracy
at each test std on the other 287 (held out: never trained on, never the test set) after every
epoch with ``noisefast.RobustnessTracker``. Its adaptive recipe starts with the same noise as the
others and halves it (``noisefast.schedules.adaptive``) whenever the tracker signals overuse: the
clean validation accuracy is more than ``--tolerance`` below the noise-free run's for ``--patience``
evaluations while the noisy accuracies no longer improve (docs/formulas.md, "Robustness tracked
during training").
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402  (examples/digits.py, next to this file)

import noisefast  # noqa: E402
from noisefast import plot  # noqa: E402
from noisefast.regularizers import ScheduledNoise, set_noise_step  # noqa: E402
from noisefast.robustness import RobustnessCurve, robustness_curve  # noqa: E402
from noisefast.robustness_tracker import RobustnessTracker  # noqa: E402
from noisefast.targets import mixup, smooth_labels  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NUM_CLASSES = 10
TEST_STDS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5)
QUICK_STDS = (0.0, 0.5, 1.0)


def classifier() -> nn.Module:
    """The network every recipe trains: images [B, 1, 8, 8] -> logits [B, 10]."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                         nn.Linear(256, NUM_CLASSES))


# --------------------------------------------------------------------------------------------------
# Recipes

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def label_smoothing_loss(eps: float) -> Loss:
    def loss(model, x, y, g):
        return F.cross_entropy(model(x), smooth_labels(y, NUM_CLASSES, eps))
    return loss


def mixup_loss(alpha: float) -> Loss:
    def loss(model, x, y, g):
        batch = mixup(x, y, alpha, generator=g)
        return batch.loss(model(batch.x))
    return loss


def input_noise(std: float, schedule: Optional[Callable[[int], Callable[[int], float]]] = None):
    """build(): a GaussianNoise layer on the input (active in training only), optionally with a
    magnitude schedule made from the run's total number of steps."""
    def build(net: nn.Module, total_steps: int) -> nn.Module:
        sched = schedule(total_steps) if schedule is not None else None
        return nn.Sequential(noisefast.GaussianNoise(std, schedule=sched), net)
    return build


def keep(net: nn.Module, total_steps: int) -> nn.Module:
    return net


@dataclass(frozen=True)
class Regulariser:
    """One training recipe.

    name: its label in the table and the figure.
    build: (classifier, total_steps) -> the module to train and evaluate (e.g. with a noise layer).
    loss: (model, x, y, generator) -> the batch's loss.
    after_backward: None, or (model, total_steps) -> hook(step) called after each backward, before
        the optimiser step (where gradient noise goes).
    """
    name: str
    build: Callable[[nn.Module, int], nn.Module] = keep
    loss: Loss = cross_entropy_loss
    after_backward: Optional[Callable[[nn.Module, int], Callable[[int], None]]] = None


def weight_noise(std: float):
    """build(): the classifier behind WeightNoise on its weight matrices (biases stay clean)."""
    def build(net: nn.Module, total_steps: int) -> nn.Module:
        return noisefast.WeightNoise(net, std, filter=noisefast.weights_only)
    return build


def gradient_noise(eta: float, gamma: float = 0.55):
    """after_backward(): GradientNoise on every parameter (variance eta / (1 + t)^gamma)."""
    def after_backward(model: nn.Module, total_steps: int) -> Callable[[int], None]:
        noise = noisefast.GradientNoise(model.parameters(), eta=eta, gamma=gamma)
        return lambda step: noise.step()
    return after_backward


REGULARISERS: List[Regulariser] = [
    Regulariser("baseline"),
    Regulariser("input noise 0.5", build=input_noise(0.5)),
    Regulariser("input noise 1.0, cosine to 0.25",
                build=input_noise(1.0, lambda T: noisefast.schedules.cosine(1.0, 0.25, T))),
    Regulariser("label smoothing 0.1", loss=label_smoothing_loss(0.1)),
    Regulariser("mixup alpha 1.0", loss=mixup_loss(1.0)),
    Regulariser("weight noise 0.05", build=weight_noise(0.05)),
    Regulariser("gradient noise eta 0.01", after_backward=gradient_noise(0.01)),
]


# --------------------------------------------------------------------------------------------------
# Training and evaluation


EpochEnd = Callable[[nn.Module, int], None]


def train(recipe: Regulariser, data: digits.DigitsSplit, *, seed: int, epochs: int, batch_size: int,
          lr: float, on_epoch_end: Optional[EpochEnd] = None) -> nn.Module:
    """Adam on ``recipe``; ``on_epoch_end(model, epoch)`` (epoch = 1, 2, ...) after each epoch."""
    torch.manual_seed(seed)
    net = classifier()
    n = data.train_images.shape[0]
    steps_per_epoch = n // batch_size
    total_steps = epochs * steps_per_epoch
    model = recipe.build(net, total_steps)
    hook = recipe.after_backward(model, total_steps) if recipe.after_backward is not None else None
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 10_000)  # mixup draws, noise layers use the default one
    model.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=order)
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            set_noise_step(model, step)
            loss = recipe.loss(model, data.train_images[idx], data.train_labels[idx], noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if hook is not None:
                hook(step)
            optimizer.step()
            step += 1
        if on_epoch_end is not None:
            on_epoch_end(model, epoch + 1)  # the tracker restores the model's modes
    return model


def evaluate(model: nn.Module, data: digits.DigitsSplit, stds, *, seed: int, repeats: int) -> RobustnessCurve:
    """Accuracy on the test images at each std; each image is seen ``repeats`` times with fresh noise."""
    batches = [(data.test_images, data.test_labels)] * repeats
    return robustness_curve(model, batches, stds, generator=torch.Generator().manual_seed(seed + 20_000))


def mean_std(values, digits: int = 1) -> str:
    """'mean ± std' over runs (just the mean for one run)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1):.{digits}f}"


def markdown_table(curves: Dict[str, List[RobustnessCurve]], *, header: str, extra=None, first: str = "regulariser") -> str:
    """One row per label, test accuracy (%) at each std; ``extra``: column name -> {label: cell}."""
    extra = extra or {}
    stds = next(iter(curves.values()))[0].stds
    lines = [header, "",
             f"| {first} | " + " | ".join([f"std {s:g}" for s in stds] + list(extra)) + " |",
             "|---|" + "---:|" * (len(stds) + len(extra))]
    for name, runs in curves.items():
        values = 100 * np.array([c.values for c in runs])
        cells = [mean_std(values[:, j]) for j in range(len(stds))] + [column[name] for column in extra.values()]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Injection schedules: every batch, every k-th epoch, adaptive (with a RobustnessTracker)

VALIDATION = 287  # training images held out for the tracker


@dataclass(frozen=True)
class Injection:
    """One way of injecting input noise of std ``std``: ``schedule(steps_per_epoch, total_steps)``
    gives the GaussianNoise schedule (None: every batch; no layer at all when std is 0)."""
    name: str
    std: float
    schedule: Optional[Callable[[int, int], Callable[[int], float]]] = None


def injections(std: float, every_k: int, *, factor: float, min_value: float) -> List[Injection]:
    return [
        Injection("no noise (reference)", 0.0),
        Injection(f"std {std:g} on every batch", std),
        Injection(f"std {std:g} on one epoch in {every_k} (interval)", std,
                  lambda spe, total: noisefast.schedules.interval(1.0, every=every_k * spe, duration=spe)),
        Injection(f"std {std:g}, adaptive (x{factor:g} on overuse)", std,
                  lambda spe, total: noisefast.schedules.adaptive(1.0, factor=factor, min_value=min_value)),
    ]


def adaptive_schedules(model: nn.Module) -> list:
    """The adaptive schedules of a model's noise modules, each once."""
    found = {}
    for module in model.modules():
        if isinstance(module, ScheduledNoise) and isinstance(module.schedule, noisefast.schedules.adaptive):
            found[id(module.schedule)] = module.schedule
    return list(found.values())


def follow(tracker: RobustnessTracker, log=None) -> EpochEnd:
    """on_epoch_end: evaluate with the tracker after each epoch; an adaptive schedule in the model is
    reduced when the tracker signals overuse."""
    def on_epoch_end(model: nn.Module, epoch: int) -> None:
        record = tracker.step(model, epoch)
        if record is None:
            return
        for schedule in adaptive_schedules(model):
            schedule.step(overuse=record.overuse)
        if log is not None and record.overuse:
            log(tracker.summary())
    return on_epoch_end


def run_injection(injection: Injection, train_data: digits.DigitsSplit, validation, stds, *, seed: int, epochs: int,
                  batch_size: int, lr: float, reference: Optional[float], tolerance: float, patience: int):
    """Train one injection recipe with a tracker on ``validation``; (model, tracker, final factor)."""
    steps_per_epoch = train_data.train_images.shape[0] // batch_size

    def build(net: nn.Module, total_steps: int) -> nn.Module:
        if injection.std == 0:
            return net
        sched = injection.schedule(steps_per_epoch, total_steps) if injection.schedule is not None else None
        return nn.Sequential(noisefast.GaussianNoise(injection.std, schedule=sched), net)

    tracker = RobustnessTracker([validation], stds, every=1, tolerance=tolerance, patience=patience,
                                reference=reference, seed=seed + 30_000, same_noise=True)
    model = train(Regulariser(injection.name, build=build), train_data, seed=seed, epochs=epochs,
                  batch_size=batch_size, lr=lr, on_epoch_end=follow(tracker))
    schedules = adaptive_schedules(model)
    factor = schedules[0](0) if schedules else (1.0 if injection.std else 0.0)
    return model, tracker, factor


def compare_injections(data: digits.DigitsSplit, stds, args) -> str:
    """The injection comparison: a markdown section, and the tracking figure written to args.image_dir."""
    train_data = digits.DigitsSplit(data.train_images[:-VALIDATION], data.train_labels[:-VALIDATION],
                                    data.test_images, data.test_labels)
    validation = (data.train_images[-VALIDATION:], data.train_labels[-VALIDATION:])
    recipes = injections(args.injection_std, args.every_k, factor=args.factor, min_value=args.min_value)
    curves: Dict[str, List[RobustnessCurve]] = {r.name: [] for r in recipes}
    signals: Dict[str, List[int]] = {r.name: [] for r in recipes}
    factors: Dict[str, List[float]] = {r.name: [] for r in recipes}
    trackers: Dict[str, RobustnessTracker] = {}
    start = time.perf_counter()
    for seed in range(args.seeds):
        reference = None
        for recipe in recipes:
            model, tracker, factor = run_injection(
                recipe, train_data, validation, stds, seed=seed, epochs=args.epochs, batch_size=args.batch,
                lr=args.lr, reference=reference, tolerance=args.tolerance, patience=args.patience)
            if recipe.std == 0:
                # the reference clean accuracy: the noise-free run's, averaged over its last 10 epochs
                reference = float(np.mean(tracker.series(0.0)[-10:]))
            curves[recipe.name].append(evaluate(model, train_data, stds, seed=seed, repeats=args.repeats))
            signals[recipe.name].append(sum(r.overuse for r in tracker.history))
            factors[recipe.name].append(factor * recipe.std)
            if seed == 0:
                trackers[recipe.name] = tracker
            print(f"seed {seed} {recipe.name:40s} {tracker.summary()}", flush=True)
    elapsed = time.perf_counter() - start
    plot.robustness_history(trackers, stds=(0.0, max(stds)), path=args.image_dir / "robustness_tracking.png",
                            xlabel="epoch", title=f"Validation accuracy during training, clean and std {max(stds):g} (seed 0)")
    header = (f"## Noise on every batch, on one epoch in {args.every_k}, or adaptive\n\n"
              f"The same input noise (std {args.injection_std:g}) injected on every batch, only during one epoch in "
              f"{args.every_k} (`schedules.interval(1.0, every={args.every_k} * steps_per_epoch, "
              f"duration=steps_per_epoch)`), or on every batch with a magnitude that halves each time the tracker "
              f"signals overuse (`schedules.adaptive(1.0, factor={args.factor:g}, min_value={args.min_value:g})`, "
              f"`schedule.step(overuse=tracker.overuse)` after each epoch). Trained on {train_data.train_images.shape[0]} "
              f"images; a `RobustnessTracker` evaluates the {VALIDATION} held-out validation images after every epoch "
              f"(same noise each time); its overuse rule "
              f"([docs/formulas.md](formulas.md#robustness-tracked-during-training-and-overuse-of-noise)) "
              f"uses the noise-free run's clean validation accuracy (mean "
              f"of its last 10 epochs) as the reference, tolerance {args.tolerance:g}, patience {args.patience}. "
              f"Test accuracy (%) at the end, mean ± std over {args.seeds} seed(s), {args.epochs} epochs; "
              f"overuse signals per run and the final noise std. "
              f"Made in {elapsed:.0f} s on {args.threads} thread(s).\n\n"
              f"![robustness during training](images/robustness_tracking.png)")
    extra = {"overuse signals": {k: mean_std(v) for k, v in signals.items()},
             "final noise std": {k: mean_std(v, 3) for k, v in factors.items()}}
    return markdown_table(curves, header=header, extra=extra, first="injection")


def compare_regularisers(data: digits.DigitsSplit, stds, args) -> str:
    """The regulariser comparison: a markdown section, and its figure written to args.image_dir."""
    start = time.perf_counter()
    curves: Dict[str, List[RobustnessCurve]] = {}
    for recipe in REGULARISERS:
        curves[recipe.name] = []
        for seed in range(args.seeds):
            model = train(recipe, data, seed=seed, epochs=args.epochs, batch_size=args.batch, lr=args.lr)
            curves[recipe.name].append(evaluate(model, data, stds, seed=seed, repeats=args.repeats))
        accs = ", ".join(f"{v:.3f}" for v in np.mean([c.values for c in curves[recipe.name]], axis=0))
        print(f"{recipe.name:34s} accuracy at stds {stds}: {accs}", flush=True)
    elapsed = time.perf_counter() - start
    plot.robustness_curve(curves, path=args.image_dir / "robustness.png",
                          title=f"Digits MLP under Gaussian input noise ({args.seeds} seed(s), mean ± std)")
    header = (f"## Regularisers\n\n"
              f"Test accuracy (%) under Gaussian input noise x + std * z (inputs in [-1, 1]), mean ± std over "
              f"{args.seeds} seed(s); {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}; "
              f"{data.test_images.shape[0]} test images x {args.repeats} noise draws per std. "
              f"Made in {elapsed:.0f} s on {args.threads} thread(s).\n\n"
              f"![robustness curves](images/robustness.png)")
    return markdown_table(curves, header=header)


PARTS = {"regularisers": compare_regularisers, "injection": compare_injections}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, 3 test stds (a smoke test)")
    parser.add_argument("--only", choices=sorted(PARTS), default=None, help="run one of the two comparisons")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per recipe (default 3)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="noise draws per test image and std (default 10)")
    parser.add_argument("--injection-std", type=float, default=1.5,
                        help="input noise std of the injection comparison (default 1.5)")
    parser.add_argument("--every-k", type=int, default=4, help="the interval recipe's k: noise every k-th epoch")
    parser.add_argument("--factor", type=float, default=0.5, help="the adaptive recipe's reduction factor")
    parser.add_argument("--min-value", type=float, default=0.25,
                        help="the adaptive recipe's floor, a factor of --injection-std (default 0.25)")
    parser.add_argument("--tolerance", type=float, default=0.01, help="the tracker's tolerance (accuracy)")
    parser.add_argument("--patience", type=int, default=3, help="the tracker's patience (evaluations)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the model is tiny)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for robustness.md and its figures (default: docs and docs/images)")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "batch", "repeats", "threads", "every_k", "patience"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.factor < 1:
        parser.error("--factor must be in [0, 1)")
    if args.quick:
        args.seeds, args.epochs, args.repeats, args.every_k, args.patience = 1, 3, 1, 2, 1
    stds = QUICK_STDS if args.quick else TEST_STDS
    torch.set_num_threads(args.threads)
    args.image_dir = (args.out or ROOT / "docs" / "images")
    table_path = (args.out or ROOT / "docs") / "robustness.md"
    args.image_dir.mkdir(parents=True, exist_ok=True)
    table_path.parent.mkdir(parents=True, exist_ok=True)

    data = digits.load_digits_split()
    start = time.perf_counter()
    sections = {name: PARTS[name](data, stds, args) for name in PARTS if args.only in (None, name)}
    elapsed = time.perf_counter() - start
    text = update_sections(table_path.read_text() if table_path.exists() else "", sections)
    table_path.write_text(text)
    print(text)
    print(f"wrote {table_path} and its figures in {args.image_dir} ({elapsed:.1f} s)")
    return 0


TITLE = ("# Robustness of noise regularisers (digits MLP)\n\n"
         "Made by `python examples/robustness.py` (each section says how long it took; "
         "`--only regularisers` or `--only injection` remakes one section and keeps the other).\n")


def update_sections(old: str, sections: Dict[str, str]) -> str:
    """The document with ``sections`` (name -> markdown) replacing those of ``old``; the other
    sections of ``old`` are kept, so one part can be remade alone."""
    def block(name: str, body: str) -> str:
        return f"<!-- section:{name}:start -->\n{body}<!-- section:{name}:end -->\n"

    kept = {}
    for name in PARTS:
        begin, end = f"<!-- section:{name}:start -->\n", f"<!-- section:{name}:end -->"
        if begin in old and end in old:
            kept[name] = old[old.index(begin) + len(begin):old.index(end)]
    kept.update(sections)
    return TITLE + "".join("\n" + block(name, kept[name]) for name in PARTS if name in kept)


if __name__ == "__main__":
    sys.exit(main())
