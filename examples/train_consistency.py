"""Improved consistency training (iCT) on scikit-learn's 8x8 handwritten digits, with noisefast.

    python examples/train_consistency.py                      # ~5 minutes on 2 CPU cores
    python examples/train_consistency.py --device cuda
    python examples/train_consistency.py --distribution lognormal --curriculum ict --no-predefined-levels
    python examples/train_consistency.py --stop-at 500        # stop early, as if interrupted ...
    python examples/train_consistency.py --resume             # ... and continue exactly
    torchrun --nproc-per-node 2 examples/train_consistency.py --fsdp   # FSDP2, sharded EMA (gloo/NCCL)

iCT (Song & Dhariwal 2023, "Improved Techniques for Training Consistency Models"): Karras levels,
a level distribution (iCT's discrete log-normal, or the polynomial one of Gokmen et al. 2024, "High
Noise Scheduling is a Must"), a curriculum for the number of levels N(k) (iCT's exponential one,
the sinusoidal one of Gokmen et al., or a constant N), x + sigma_i z and x + sigma_{i+1} z with one
shared z, the loss lambda(sigma_i) d(f(x + sigma_{i+1} z, sigma_{i+1}), sg f(x + sigma_i z, sigma_i))
with lambda = 1 / (sigma_{i+1} - sigma_i) and the per-sample pseudo-Huber d (default c), and an EMA
of the weights for sampling. There is no EMA teacher: the target is the same network under
stop-gradient. The network has no dropout (and no batch statistics), so the student and target
passes are the same function of the same weights. noisefast does the levels, curriculum,
perturbation (``ConsistencyNoise``), the parameterisation (``consistency_output``), the loss
(``pseudo_huber_loss``) and the EMA (``EMA``).

The default schedule is Gokmen et al.'s: polynomial levels (curve 4) taken from one predefined
Karras vector, with the sinusoidal curriculum. In the paired-seed sweep of docs/comparison.md (10
seeds, 4000 steps, a width-16 model) polynomial levels with the sinusoidal curriculum were the only
cells with no failed seed; iCT's own log-normal levels with the exponential curriculum
(--distribution lognormal --curriculum ict --no-predefined-levels) ended far worse on 6 of 10 seeds,
and predefined levels made no clear difference against levels rebuilt for each N (--no-predefined-levels).

Outputs under <out>/<name>/ (default runs/digits/):
  samples.png      1-step and 2-step samples of the EMA model (2-step: back to sigma = 0.821)
  metrics.json     configuration, training curve, throughput and the quality metrics below
  checkpoint.pt    model, optimiser, EMA, RNG states (noise generator, data order, torch's default
                   generator) and the step: --resume continues exactly where the run stopped
                   (bit for bit on the CPU)

With --fsdp (under torchrun; gloo on the CPU, NCCL with --device cuda) the model is sharded with FSDP2
(``fully_shard``) and the EMA keeps float32 shadows of each rank's shards (``noisefast.EMA`` of the
sharded model, one fused update per step, no communication). Every rank draws the same full batch
and keeps its rows, so the run is the one-process run split over the ranks (the same data, levels
and noise; gradients averaged by FSDP2). Rank 0 evaluates with the gathered EMA weights
(``EMA.full_averaged()``). The checkpoint is written with torch.distributed.checkpoint (model,
optimiser and EMA shards, the step) into <out>/<name>/checkpoint-fsdp/; --resume and --stop-at are
for one process.

Quality metrics, no download: a Frechet distance in the 64-d feature space of a small digits
classifier that this script trains once and caches (<out>/digits_classifier.pt). This is NOT FID
(no Inception network; the numbers are not comparable with FID values); the held-out test images
give the floor that real, unseen digits reach. A nearest-training-neighbour check compares how close
samples and test images come to the training set (ratio well below 1 would mean memorisation).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import digits  # noqa: E402  (examples/digits.py, next to this file)

import noisefast  # noqa: E402

DISTRIBUTIONS = ("lognormal", "polynomial")
CURRICULA = ("ict", "sinusoidal", "constant")
CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_FORMAT = "noisefast-ict-digits/1"

# The configuration that defines a training run: stored in the checkpoint; a resumed run keeps it.
# Defaults sized for about 5 minutes on 2 CPU cores (see --help).
DEFAULTS = {
    "steps": 2000,
    "batch": 64,
    "distribution": "polynomial",
    "curve": 4.0,
    "curriculum": "sinusoidal",
    "constant_n": 81,
    "predefined_levels": True,
    "seed": 0,
    "ema_decay": 0.9999,
    "lr": 4e-4,
    "warmup": 100,
    "width": 32,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train_consistency.py", description=__doc__.split("\n\n")[2],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    d = DEFAULTS
    # Training options default to None so that --resume can tell "given" from "not given".
    p.add_argument("--steps", type=int, help=f"total training steps K [default {d['steps']}]")
    p.add_argument("--batch", type=int, help=f"images per step [default {d['batch']}]")
    p.add_argument("--distribution", choices=DISTRIBUTIONS,
                   help=f"level distribution: iCT's discrete log-normal (P_mean -1.1, P_std 2.0) or "
                        f"Gokmen et al.'s stratified polynomial [default {d['distribution']}]")
    p.add_argument("--curve", type=float, help=f"polynomial curve (exponent) [default {d['curve']}]")
    p.add_argument("--curriculum", choices=CURRICULA,
                   help=f"N(k): iCT's exponential (s0 10, s1 1280), sinusoidal (s0 20, s1 250) or "
                        f"constant (--constant-n) [default {d['curriculum']}]")
    p.add_argument("--constant-n", dest="constant_n", type=int,
                   help=f"N for --curriculum constant [default {d['constant_n']}]")
    p.add_argument("--predefined-levels", dest="predefined_levels", action=argparse.BooleanOptionalAction,
                   help="take every N's Karras levels from one vector built for the curriculum's largest "
                        "N (Gokmen et al.'s 'predefined Karras noises', our reading) "
                        f"[default {d['predefined_levels']}]")
    p.add_argument("--seed", type=int, help=f"seed of the run [default {d['seed']}]")
    p.add_argument("--ema-decay", dest="ema_decay", type=float,
                   help="largest decay of the evaluation EMA; the decay after u updates is "
                        f"min(this, 1 - (1 + u)^-0.75) [default {d['ema_decay']}]")
    p.add_argument("--lr", type=float, help=f"Adam learning rate [default {d['lr']}]")
    p.add_argument("--warmup", type=int, help=f"linear learning-rate warm-up steps [default {d['warmup']}]")
    p.add_argument("--width", type=int, help=f"UNet channels at 8x8 (multiple of 8) [default {d['width']}]")
    p.add_argument("--name", default="digits", help="run name: outputs go to <out>/<name>/")
    p.add_argument("--out", default="runs", help="output directory")
    p.add_argument("--resume", action="store_true",
                   help="continue from <out>/<name>/checkpoint.pt with its configuration")
    p.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    p.add_argument("--stop-at", dest="stop_at", type=int, default=None,
                   help="stop after this many completed steps (checkpoint, no evaluation), as if "
                        "interrupted; --resume continues to --steps")
    p.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, default=500,
                   help="also write the checkpoint every this many steps (0: only at the end)")
    p.add_argument("--eval-samples", dest="eval_samples", type=int, default=1080,
                   help="samples for the metrics (a multiple of the 360 test images is best)")
    p.add_argument("--no-eval", dest="no_eval", action="store_true",
                   help="skip sampling and metrics (training, checkpoint and metrics.json only)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice, normally one per core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no printing")
    p.add_argument("--fsdp", action="store_true",
                   help="shard the model with FSDP2 over the torchrun processes (sharded EMA; rank 0 evaluates)")
    return p


def _check_config(parser: argparse.ArgumentParser, cfg: dict, n_train: int) -> None:
    if cfg["steps"] <= 0:
        parser.error(f"--steps must be > 0, got {cfg['steps']}")
    if not 2 <= cfg["batch"] <= n_train:
        parser.error(f"--batch must be between 2 and {n_train} (the training images), got {cfg['batch']}")
    if not (math.isfinite(cfg["curve"]) and cfg["curve"] > 0):
        parser.error(f"--curve must be > 0, got {cfg['curve']}")
    if cfg["constant_n"] < 2:
        parser.error(f"--constant-n must be >= 2, got {cfg['constant_n']}")
    if not 0.0 <= cfg["ema_decay"] < 1.0:
        parser.error(f"--ema-decay must be in [0, 1), got {cfg['ema_decay']}")
    if not (math.isfinite(cfg["lr"]) and cfg["lr"] > 0):
        parser.error(f"--lr must be > 0, got {cfg['lr']}")
    if cfg["warmup"] < 0:
        parser.error(f"--warmup must be >= 0, got {cfg['warmup']}")
    if cfg["width"] <= 0 or cfg["width"] % 8:
        parser.error(f"--width must be a positive multiple of 8, got {cfg['width']}")


def check_device_argument(parser: argparse.ArgumentParser, name: str) -> None:
    """parser.error unless ``--device name`` names a device usable here."""
    try:
        device = torch.device(name)
    except RuntimeError:
        parser.error(f"--device: unknown device {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here")


def parse_args(argv=None):
    """Parsed options and the run configuration (DEFAULTS, the checkpoint's on --resume, then the
    flags given). Bad values exit with status 2 and a message naming the flag."""
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    run_dir = Path(args.out) / args.name
    if args.resume:
        path = run_dir / CHECKPOINT_FILE
        if not path.exists():
            parser.error(f"--resume: no checkpoint at {path}")
        saved = torch.load(path, map_location="cpu", weights_only=False)["config"]
        for key, value in given.items():
            if value != saved[key]:
                flag = "--" + key.replace("_", "-")
                parser.error(f"{flag} {value} differs from the checkpoint's {saved[key]}: a resumed run "
                             "keeps the configuration it started with")
        cfg = dict(saved)
    else:
        cfg = {**DEFAULTS, **given}
    _check_config(parser, cfg, n_train=digits.N_TRAIN)
    if args.stop_at is not None and not 1 <= args.stop_at <= cfg["steps"]:
        parser.error(f"--stop-at must be between 1 and --steps ({cfg['steps']}), got {args.stop_at}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    if args.checkpoint_every < 0:
        parser.error(f"--checkpoint-every must be >= 0, got {args.checkpoint_every}")
    if args.fsdp and (args.resume or args.stop_at is not None):
        parser.error("--fsdp runs from the start to --steps: --resume and --stop-at are for one process")
    if args.eval_samples < digits.N_TEST:
        parser.error(f"--eval-samples must be >= {digits.N_TEST} (the test-set size), got {args.eval_samples}")
    check_device_argument(parser, args.device)
    return args, cfg


# --------------------------------------------------------------------------------------------------
# Training

def level_distribution(cfg: dict):
    if cfg["distribution"] == "lognormal":
        return noisefast.LogNormalLevels()                      # P_mean = -1.1, P_std = 2.0
    return noisefast.PolynomialLevels(curve=cfg["curve"])        # stratified over the batch


def curriculum(cfg: dict):
    if cfg["curriculum"] == "constant":
        return noisefast.make_curriculum("constant", cfg["steps"], n=cfg["constant_n"])
    return noisefast.make_curriculum(cfg["curriculum"], cfg["steps"])


def derived_seeds(seed: int) -> Dict[str, int]:
    """Independent seeds for model initialisation, the noise generator, the data order and sampling."""
    words = np.random.SeedSequence(seed).generate_state(4, dtype=np.uint32)
    return dict(zip(("model", "noise", "data", "sample"), (int(w) for w in words)))


class Run:
    """Everything a training run owns, and its checkpoint."""

    def __init__(self, cfg: dict, device: torch.device, data: digits.DigitsSplit):
        self.cfg, self.device = cfg, device
        seeds = derived_seeds(cfg["seed"])
        self.sample_seed = seeds["sample"]
        torch.manual_seed(seeds["model"])
        self.model = digits.ConsistencyModel(cfg["width"]).to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"])
        # Decay 1 - (1 + u)^(-3/4) after u updates, capped at ema_decay (diffusers' EMA warm-up with
        # the power suited to short runs): it averages over a window that grows with the run, so a
        # run of a few thousand steps does not keep a sizeable share of its random initial weights
        # (a constant 0.999 would keep 0.999^2000 = 13 % of them after 2000 steps).
        self.ema = noisefast.EMA(self.model, decay=cfg["ema_decay"], warmup="inverse_gamma", power=0.75)
        self.curriculum = curriculum(cfg)
        self.noise = noisefast.ConsistencyNoise(
            levels=level_distribution(cfg), curriculum=self.curriculum, total_steps=cfg["steps"],
            sigma_min=digits.SIGMA_MIN, sigma_max=digits.SIGMA_MAX, rho=7.0,
            predefined_levels=cfg["predefined_levels"])
        self.noise_generator = torch.Generator(device=device).manual_seed(seeds["noise"])
        self.order = digits.DataOrder(len(data.train_images), cfg["batch"], seeds["data"])
        self.train_images = data.train_images.to(device)
        self.step = 0               # completed steps; the next step's curriculum position
        self.history = []           # one entry per logging window
        self.window = []            # losses of the current logging window
        self.train_seconds = 0.0
        # Set to True to keep the last step's per-sample levels and losses in self.last_per_sample
        # (examples/compare_schedules.py bins them by noise level); off by default (one more pass).
        self.keep_per_sample = False
        self.last_per_sample = None

    def lr_at(self, step: int) -> float:
        warmup = self.cfg["warmup"]
        return self.cfg["lr"] * min(1.0, (step + 1) / warmup) if warmup else self.cfg["lr"]

    def train_step(self) -> float:
        """One iCT step at curriculum position self.step; returns the loss."""
        x = self.train_images[self.order.next().to(self.device)]
        batch = self.noise.sample(x, self.step, generator=self.noise_generator)
        # Student at the larger level sigma_{i+1}; target: the same weights at sigma_i, same z,
        # under stop-gradient (iCT has no EMA teacher).
        student = self.model(batch.x_next, batch.sigma_next)
        with torch.no_grad():
            target = self.model(batch.x_cur, batch.sigma)
        loss = noisefast.pseudo_huber_loss(student, target, weight=batch.weight)
        if self.keep_per_sample:
            # [B] each: sigma_{i+1} (the student's level), the unweighted pseudo-Huber distance d_b,
            # and the weight lambda_b = 1 / (sigma_{i+1} - sigma_i); the loss is mean(weight * distance).
            with torch.no_grad():
                self.last_per_sample = {
                    "sigma_next": batch.sigma_next,
                    "distance": noisefast.pseudo_huber_loss(student.detach(), target, reduction="none"),
                    "weight": batch.weight}
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.ema.update()
        self.step += 1
        return loss.item()

    def state_dict(self) -> dict:
        return {
            "format": CHECKPOINT_FORMAT,
            "config": dict(self.cfg),
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "ema": self.ema.state_dict(),
            "noise_generator": self.noise_generator.get_state(),
            "data_order": self.order.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None,
            "history": list(self.history),
            "window": list(self.window),
            "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a checkpoint of this example (format {state.get('format')!r})")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.ema.load_state_dict(state["ema"])
        self.noise_generator.set_state(state["noise_generator"])
        self.order.load_state_dict(state["data_order"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.window = list(state["window"])
        self.train_seconds = float(state["train_seconds"])

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)       # never leave a half-written checkpoint behind


def train(run: Run, stop: int, *, checkpoint: Path, checkpoint_every: int, quiet: bool,
          log_every: int = 50) -> None:
    """Train from run.step to ``stop`` completed steps, checkpointing on the way and at the end."""
    from tqdm import tqdm

    cfg = run.cfg
    start, base_seconds = run.step, run.train_seconds
    started, paused = time.perf_counter(), 0.0

    def seconds() -> float:     # training time of this session, checkpoint writing excluded
        return time.perf_counter() - started - paused

    window = run.window
    bar = tqdm(total=cfg["steps"], initial=start, disable=quiet, dynamic_ncols=True,
               desc=f"iCT {cfg['distribution']}/{cfg['curriculum']}")
    try:
        while run.step < stop:
            n_levels = run.curriculum.num_levels(run.step)
            window.append(run.train_step())
            if not math.isfinite(window[-1]):
                raise FloatingPointError(f"loss is {window[-1]} at step {run.step}")
            if run.step % log_every == 0 or run.step == cfg["steps"]:
                run.history.append({"step": run.step, "loss": float(np.mean(window)), "num_levels": n_levels})
                window.clear()
            if run.step % 10 == 0 or run.step == stop:
                rate = (run.step - start) * cfg["batch"] / max(seconds(), 1e-9)
                bar.set_postfix({"loss": f"{run.history[-1]['loss'] if run.history else window[-1]:.4f}",
                                 "N": n_levels, "samples/s": f"{rate:.0f}"}, refresh=False)
            bar.update(1)
            if checkpoint_every and run.step % checkpoint_every == 0 and run.step < stop:
                run.train_seconds = base_seconds + seconds()
                saving = time.perf_counter()
                run.save(checkpoint)
                paused += time.perf_counter() - saving
    finally:
        bar.close()
    run.train_seconds = base_seconds + seconds()
    run.save(checkpoint)


# --------------------------------------------------------------------------------------------------
# FSDP2 (--fsdp): the same run with the model sharded over the torchrun processes

class RankRows:
    """The consistency noise of the full batch, of which this rank keeps its rows: every rank draws
    the same full batch (the same generators in the same states), so the ranks together take the
    one-process step."""

    def __init__(self, noise: noisefast.ConsistencyNoise, rank: int, world_size: int):
        self.noise, self.rank, self.world_size = noise, rank, world_size

    def sample(self, x: torch.Tensor, step: int, *, generator: torch.Generator) -> noisefast.ConsistencyBatch:
        batch = self.noise.sample(x, step, generator=generator)
        return noisefast.ConsistencyBatch(*(t.chunk(self.world_size)[self.rank] for t in batch))


class FSDPRun(Run):
    """A :class:`Run` whose model is sharded with FSDP2 and whose EMA averages the shards. Joins the
    torchrun process group (gloo on the CPU, NCCL on CUDA) unless one is initialised already."""

    def __init__(self, cfg: dict, device: torch.device, data: digits.DigitsSplit):
        import torch.distributed as dist
        from torch.distributed.fsdp import fully_shard

        self.owns_group = not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if device.type == "cuda":
            torch.cuda.set_device(device)
        if cfg["batch"] % self.world_size:
            raise SystemExit(f"--batch {cfg['batch']} must be a multiple of the {self.world_size} processes")
        super().__init__(cfg, device, data)     # every rank builds the same model from the same seed
        for block in self.model.net.children():
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block)
        fully_shard(self.model)
        # Built again on the sharded parameters, with the same settings: Adam and the EMA keep shards.
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg["lr"])
        self.ema = noisefast.EMA(self.model, decay=self.ema.decay, warmup=self.ema.warmup, power=self.ema.power)
        self.noise = RankRows(self.noise, self.rank, self.world_size)

    def train_step(self) -> float:
        """One step of :class:`Run`; returns the loss of the full batch (the mean of the ranks')."""
        import torch.distributed as dist

        loss = torch.tensor([super().train_step()], dtype=torch.float64, device=self.device)
        dist.all_reduce(loss)
        return loss.item() / self.world_size

    def save(self, path: Path) -> None:
        """torch.distributed.checkpoint of the model, optimiser and EMA shards and the step, into
        ``<path's directory>/checkpoint-fsdp/`` (every rank writes its shards)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        dcp.save({"config": dict(self.cfg), "step": self.step, "model": model_state, "optimizer": optimizer_state,
                  "ema": self.ema.state_dict()}, checkpoint_id=path.parent / "checkpoint-fsdp")

    def evaluate(self, data: digits.DigitsSplit, out_dir: Path, n_samples: int, log: Callable) -> Optional[dict]:
        """Rank 0 evaluates an unsharded model holding the gathered EMA weights (every rank takes
        part in the gathering); the other ranks return None."""
        weights = self.ema.full_averaged()
        if self.rank != 0:
            return None
        model = digits.ConsistencyModel(self.cfg["width"]).to(self.device)
        model.load_state_dict(weights)
        return evaluate_model(model, self.sample_seed, self.device, data, out_dir, n_samples, log)

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_group:
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------------------
# Evaluation

def save_samples_png(path: Path, one_step: torch.Tensor, two_step: torch.Tensor, metrics: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def grid(images: torch.Tensor, rows: int = 8, cols: int = 8) -> np.ndarray:
        tiles = images[:rows * cols, 0].cpu().numpy()
        out = np.full((rows * 9 + 1, cols * 9 + 1), 0.35)       # 1-pixel grey gutters
        for k, tile in enumerate(tiles):
            r, c = divmod(k, cols)
            out[1 + r * 9:9 + r * 9, 1 + c * 9:9 + c * 9] = (1 - tile) / 2   # dark ink on white
        return out

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.9))
    for ax, images, title, key in ((axes[0], one_step, "1-step", "one_step"),
                                   (axes[1], two_step, f"2-step (via sigma={digits.SIGMA_MID})", "two_step")):
        ax.imshow(grid(images), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"{title}: Frechet dist. {metrics[key]['frechet_distance']:.2f}", fontsize=10)
        ax.axis("off")
    cfg = metrics["config"]
    fig.suptitle(f"iCT on 8x8 digits, EMA model: {cfg['distribution']} levels, {cfg['curriculum']} "
                 f"curriculum, {cfg['steps']} steps, seed {cfg['seed']}\n"
                 f"(Frechet distance in a digits classifier's features, not FID; held-out real digits: "
                 f"{metrics['reference']['frechet_distance_test']:.2f})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def evaluate(run: Run, data: digits.DigitsSplit, out_dir: Path, n_samples: int, log: Callable) -> dict:
    with run.ema.average_parameters(run.model):
        return evaluate_model(run.model, run.sample_seed, run.device, data, out_dir, n_samples, log)


def evaluate_model(model: torch.nn.Module, sample_seed: int, device: torch.device, data: digits.DigitsSplit,
                   out_dir: Path, n_samples: int, log: Callable) -> dict:
    """The quality metrics of ``model``'s samples (and the samples)."""
    classifier, accuracy = digits.load_or_train_classifier(out_dir, data, log=log)
    reference, floor = digits.reference_floor(classifier, data)
    generator = torch.Generator(device=device).manual_seed(sample_seed)
    one_step, two_step = digits.sample(model, n_samples, generator=generator, device=device)
    return {
        "one_step": digits.evaluate_samples(classifier, data, one_step, reference),
        "two_step": digits.evaluate_samples(classifier, data, two_step, reference),
        "reference": {"frechet_distance_test": floor, "classifier_test_accuracy": accuracy,
                      "note": "Frechet distance in the 64-d feature space of a small digits classifier "
                              "trained by this example: NOT FID, not comparable with FID values. "
                              "frechet_distance_test is the held-out test images' distance to the "
                              "training images (the floor)."},
        "samples": (one_step, two_step),
    }


def print_metrics(metrics: dict, log: Callable) -> None:
    ref = metrics["reference"]
    log("\nquality of the EMA model's samples "
        "(Frechet distance in a digits classifier's feature space: NOT FID)")
    log(f"{'':26s}{'Frechet dist.':>14s}{'classes':>9s}{'NN ratio':>10s}{'< test p05':>12s}")
    for key, label in (("one_step", "1-step"), ("two_step", f"2-step (sigma {digits.SIGMA_MID})")):
        m = metrics[key]
        log(f"{label:26s}{m['frechet_distance']:14.3f}{m['classes_covered']:9d}"
            f"{m['nn_ratio']:10.3f}{m['frac_samples_below_test_p05']:12.3f}")
    log(f"{'held-out test images':26s}{ref['frechet_distance_test']:14.3f}{10:9d}{1.0:10.3f}{0.05:12.3f}")
    log("NN ratio: median distance of samples to their nearest training image / the same for held-out "
        "test images (well below 1 would mean memorisation); '< test p05': fraction of samples closer "
        "to the training set than 95 % of test images (0.05 expected without memorisation).")
    log(f"digits classifier test accuracy: {ref['classifier_test_accuracy']:.4f}")


def main(argv=None) -> int:
    args, cfg = parse_args(argv)
    log = (lambda *a, **k: None) if args.quiet else print
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out_dir = Path(args.out)
    run_dir = out_dir / args.name
    checkpoint = run_dir / CHECKPOINT_FILE

    data = digits.load_digits_split()
    if args.fsdp:
        run = FSDPRun(cfg, device, data)
        device = run.device
        if run.rank != 0:
            log = lambda *a, **k: None  # noqa: E731
    else:
        run = Run(cfg, device, data)
    main_rank = getattr(run, "rank", 0) == 0
    if args.resume:
        # Loaded on the CPU: generator states must be CPU tensors; the model, optimiser and EMA
        # copy their tensors to the run's device.
        run.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=False))
        log(f"resumed {checkpoint} at step {run.step} of {cfg['steps']}")
    else:
        log(f"noisefast {noisefast.__version__}: iCT on 8x8 digits ({len(data.train_images)} train, "
            f"{len(data.test_images)} test) on {device}; outputs in {run_dir}/")
    stop = cfg["steps"] if args.stop_at is None else max(args.stop_at, run.step)
    train(run, stop, checkpoint=checkpoint, checkpoint_every=args.checkpoint_every,
          quiet=args.quiet or not main_rank)

    finished = run.step >= cfg["steps"]
    metrics = {
        "config": cfg,
        "completed_steps": run.step,
        "finished": finished,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "train_seconds": run.train_seconds,
        "samples_per_second": run.step * cfg["batch"] / max(run.train_seconds, 1e-9),
        "final_loss": run.history[-1]["loss"] if run.history else None,
        "history": run.history,
    }
    if args.fsdp:
        metrics["fsdp_processes"] = run.world_size
        evaluation = run.evaluate(data, out_dir, args.eval_samples, log) if finished and not args.no_eval else None
        run.close()
        if not main_rank:
            return 0
    elif finished and not args.no_eval:
        evaluation = evaluate(run, data, out_dir, args.eval_samples, log)
    if finished and not args.no_eval:
        one_step, two_step = evaluation.pop("samples")
        metrics.update(evaluation)
        save_samples_png(run_dir / "samples.png", one_step, two_step, metrics)
        print_metrics(metrics, log)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"\ntrained {run.step}/{cfg['steps']} steps in {run.train_seconds:.0f} s "
        f"({metrics['samples_per_second']:.0f} samples/s); wrote {run_dir}/"
        + ("samples.png, " if finished and not args.no_eval else "") + "metrics.json, "
        + ("checkpoint-fsdp/" if args.fsdp else "checkpoint.pt"))
    if not finished:
        log(f"continue with: python examples/train_consistency.py --out {args.out} --name {args.name} --resume")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
