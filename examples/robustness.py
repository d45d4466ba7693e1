"""Noise regularisers and robustness: train a small digits classifier with each regulariser and
measure its accuracy under test-time Gaussian input noise.

    python examples/robustness.py            # 3 seeds, writes docs/images/robustness.png and docs/robustness.md
    python examples/robustness.py --quick    # 1 seed, a few epochs (a smoke test: seconds)

Data: scikit-learn's 8x8 digits scaled to [-1, 1] (examples/digits.py, no download), 1437 training
and 360 test images. Model: an MLP 64-256-256-10. Each recipe trains with Adam for the same number of
steps from the same initialisation per seed; robustness is then measured with
``noisefast.robustness.robustness_curve`` (inputs x + std * z, z ~ N(0, 1)) at every test std.

The recipes are the entries of REGULARISERS: each says how to build the network, how to compute a
batch's loss and what to do after backward, so a new regulariser is one more entry.
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
from noisefast.regularizers import set_noise_step  # noqa: E402
from noisefast.robustness import RobustnessCurve, robustness_curve  # noqa: E402
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


def train(recipe: Regulariser, data: digits.DigitsSplit, *, seed: int, epochs: int, batch_size: int,
          lr: float) -> nn.Module:
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
    for _ in range(epochs):
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
    return model


def evaluate(model: nn.Module, data: digits.DigitsSplit, stds, *, seed: int, repeats: int) -> RobustnessCurve:
    """Accuracy on the test images at each std; each image is seen ``repeats`` times with fresh noise."""
    batches = [(data.test_images, data.test_labels)] * repeats
    return robustness_curve(model, batches, stds, generator=torch.Generator().manual_seed(seed + 20_000))


def markdown_table(curves: Dict[str, List[RobustnessCurve]], *, header: str) -> str:
    stds = next(iter(curves.values()))[0].stds
    lines = [header, "",
             "| regulariser | " + " | ".join(f"std {s:g}" for s in stds) + " |",
             "|---|" + "---:|" * len(stds)]
    for name, runs in curves.items():
        values = 100 * np.array([c.values for c in runs])
        cells = []
        for j in range(len(stds)):
            mean = values[:, j].mean()
            cells.append(f"{mean:.1f} ± {values[:, j].std(ddof=1):.1f}" if len(runs) > 1 else f"{mean:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, 3 epochs, 3 test stds (a smoke test)")
    parser.add_argument("--seeds", type=int, default=3, help="training seeds per regulariser (default 3)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default 60)")
    parser.add_argument("--batch", type=int, default=64, help="batch size (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--repeats", type=int, default=10,
                        help="noise draws per test image and std (default 10)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the model is tiny)")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory for robustness.png and robustness.md (default: docs/images and docs)")
    args = parser.parse_args(argv)
    for name in ("seeds", "epochs", "batch", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.quick:
        args.seeds, args.epochs, args.repeats = 1, 3, 1
    stds = QUICK_STDS if args.quick else TEST_STDS
    torch.set_num_threads(args.threads)
    image_path = (args.out or ROOT / "docs" / "images") / "robustness.png"
    table_path = (args.out or ROOT / "docs") / "robustness.md"
    image_path.parent.mkdir(parents=True, exist_ok=True)
    table_path.parent.mkdir(parents=True, exist_ok=True)

    data = digits.load_digits_split()
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

    plot.robustness_curve(curves, path=image_path,
                          title=f"Digits MLP under Gaussian input noise ({args.seeds} seed(s), mean ± std)")
    header = (f"# Robustness of noise regularisers (digits MLP)\n\n"
              f"Test accuracy (%) under Gaussian input noise x + std * z (inputs in [-1, 1]), mean ± std over "
              f"{args.seeds} seed(s); {args.epochs} epochs, batch {args.batch}, Adam lr {args.lr}; "
              f"{data.test_images.shape[0]} test images x {args.repeats} noise draws per std. "
              f"Made by `python examples/robustness.py` in {elapsed:.0f} s on {args.threads} thread(s).\n\n"
              f"![robustness curves](images/robustness.png)")
    table = markdown_table(curves, header=header)
    table_path.write_text(table)
    print(table)
    print(f"wrote {image_path} and {table_path} ({elapsed:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
