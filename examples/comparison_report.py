"""Statistics, figures and the markdown tables of the schedule sweep (examples/compare_schedules.py).

    python examples/comparison_report.py --runs runs/comparison
    python examples/comparison_report.py --runs benchmarks/results/comparison --output docs/comparison.md

Reads the per-run JSONs <runs>/<cell>/seed<k>.json and uses the seeds finished in every cell (the
paired seeds; others are listed as left out). Writes:

  <images>/comparison_curves.png     learning curves: median over seeds and interquartile band per cell
  <images>/comparison_mechanism.png  per noise-level bin: share of samples, mean distance, share of loss
  the markdown report, between the lines "<!-- report:begin -->" and "<!-- report:end -->" of --output
  (the text around them is kept; a file without them is created or must be empty)

Statistics: per cell the median and interquartile range (25th-75th percentile, linear interpolation)
over seeds; per contrast the paired differences (cell A minus cell B, seed by seed) with their median
and a percentile-bootstrap 95 % confidence interval of that median (10,000 resamples of the seeds,
numpy seed 0), the number of seeds where A is better, and the geometric mean of the ratios A / B with
its bootstrap interval. With 10 seeds the bootstrap intervals are rough (the median of 10 values can
take few distinct values); read them as the size of the uncertainty, not as exact coverage.
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compare_schedules  # noqa: E402

CELLS = compare_schedules.CELLS
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
BOOTSTRAP = 10_000

# (cell A, cell B, what A - B isolates)
CONTRASTS = (
    ("polynomial-ict", "lognormal-ict", "distribution, under iCT's curriculum"),
    ("polynomial-sinusoidal", "lognormal-sinusoidal", "distribution, under the sinusoidal curriculum"),
    ("lognormal-sinusoidal", "lognormal-ict", "curriculum, with log-normal levels"),
    ("polynomial-sinusoidal", "polynomial-ict", "curriculum, with polynomial levels"),
    ("polynomial-sinusoidal-predefined", "polynomial-sinusoidal", "predefined levels (polynomial + sinusoidal)"),
    ("polynomial-sinusoidal-predefined", "lognormal-ict", "Gokmen et al.'s recipe vs iCT's"),
)
# (path in an evaluation, column title, format)
METRICS = (
    (("one_step", "frechet_distance"), "Frechet 1-step", "{:.1f}"),
    (("two_step", "frechet_distance"), "Frechet 2-step", "{:.1f}"),
    (("one_step", "kernel_distance"), "kernel dist. 1-step", "{:.0f}"),
    (("two_step", "kernel_distance"), "kernel dist. 2-step", "{:.0f}"),
    (("one_step", "classes_covered"), "classes 1-step", "{:.0f}"),
    (("one_step", "nn_ratio"), "NN ratio 1-step", "{:.2f}"),
)
POOR = 100.0          # the "runs > 100" column: a final 1-step Frechet distance above this
SIGMA_GROUPS = ((0.0, 0.1), (0.1, 1.0), (1.0, 10.0), (10.0, float("inf")))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="comparison_report.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", default="runs/comparison", help="the sweep's directory (compare_schedules.py --out)")
    p.add_argument("--output", default="docs/comparison.md", help="markdown file to write the report into")
    p.add_argument("--images", default="docs/images", help="directory of the two PNG figures")
    p.add_argument("--image-link", dest="image_link", default="images",
                   help="how the markdown refers to the images directory")
    return p


# --------------------------------------------------------------------------------------------------
# Loading

def load_runs(runs_dir) -> Dict[str, Dict[int, dict]]:
    """{cell: {seed: record}} of every finished or diverged run JSON under ``runs_dir``, cells in
    compare_schedules.CELLS order."""
    runs: Dict[str, Dict[int, dict]] = {}
    for cell in CELLS:
        for path in sorted((Path(runs_dir) / cell).glob("seed*.json")):
            record = json.loads(path.read_text())
            if record.get("format") != compare_schedules.RUN_FORMAT:
                raise ValueError(f"{path}: not a run of compare_schedules.py (format {record.get('format')!r})")
            runs.setdefault(cell, {})[int(record["config"]["train"]["seed"])] = record
    if not runs:
        raise ValueError(f"no runs under {runs_dir} (expected <cell>/seed<k>.json)")
    return runs


def shared_settings(runs: Dict[str, Dict[int, dict]]) -> dict:
    """The configuration every run shares (the cell's own fields and the seed removed); raises when
    two runs differ in anything else."""
    own = {"seed", "distribution", "curriculum", "predefined_levels"}
    settings = None
    for cell, by_seed in runs.items():
        for seed, record in by_seed.items():
            cfg = record["config"]
            mine = {**{k: v for k, v in cfg.items() if k not in ("train", "cell")},
                    **{k: v for k, v in cfg["train"].items() if k not in own}}
            if settings is None:
                settings = mine
            elif mine != settings:
                diff = sorted(k for k in set(mine) | set(settings) if mine.get(k) != settings.get(k))
                raise ValueError(f"runs differ in more than the cell: {cell} seed {seed} has other {diff}")
    return settings


def paired_seeds(runs: Dict[str, Dict[int, dict]]) -> List[int]:
    seeds = None
    for by_seed in runs.values():
        seeds = set(by_seed) if seeds is None else seeds & set(by_seed)
    return sorted(seeds)


def final_value(record: dict, path: Tuple[str, str]) -> float:
    """A final metric; +inf for a run that diverged (it ranks last in medians and differences)."""
    if record["final"] is None:
        return float("inf")
    return float(record["final"][path[0]][path[1]])


# --------------------------------------------------------------------------------------------------
# Statistics

def median_iqr(values) -> Tuple[float, float, float]:
    v = np.asarray(values, np.float64)
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return float(q50), float(q25), float(q75)


def bootstrap_ci(values, statistic, *, resamples: int = BOOTSTRAP, seed: int = 0) -> Tuple[float, float]:
    """Percentile-bootstrap 95 % interval of ``statistic`` (a function of a [R, n] array along axis
    1) over resamples of the n values with replacement."""
    v = np.asarray(values, np.float64)
    rng = np.random.default_rng(seed)
    stats = statistic(v[rng.integers(0, len(v), size=(resamples, len(v)))])
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(a, b) -> dict:
    """Paired comparison of A and B over the same seeds (lower is better): the median difference
    A - B with its bootstrap interval, seeds where A < B, and the geometric mean of A / B (when
    both are positive) with its interval."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = a - b
    finite = np.isfinite(d)
    out = {"n": len(d), "a_better": int((a < b).sum()), "b_better": int((a > b).sum())}
    if finite.all():
        out["median"] = float(np.median(d))
        out["ci"] = bootstrap_ci(d, lambda x: np.median(x, axis=1))
    if finite.all() and (a > 0).all() and (b > 0).all():
        log_ratio = np.log(a / b)
        out["ratio"] = float(np.exp(log_ratio.mean()))
        lo, hi = bootstrap_ci(log_ratio, lambda x: x.mean(axis=1))
        out["ratio_ci"] = (float(np.exp(lo)), float(np.exp(hi)))
    return out


def curve(records: List[dict], path: Tuple[str, str]) -> Tuple[np.ndarray, np.ndarray]:
    """Steps [T] and the metric [seeds, T] of the evaluations every seed has (NaN after a divergence)."""
    steps = sorted({e["step"] for r in records for e in r["evaluations"]})
    values = np.full((len(records), len(steps)), np.nan)
    for i, r in enumerate(records):
        for e in r["evaluations"]:
            values[i, steps.index(e["step"])] = e[path[0]][path[1]]
    return np.asarray(steps), values


def bin_totals(records: List[dict], windows: Optional[slice] = None) -> Dict[str, np.ndarray]:
    """Per seed and bin [seeds, bins], summed over ``windows`` (default all): sample count,
    unweighted distance and weighted loss."""
    out = {}
    for key in ("count", "distance", "weighted"):
        out[key] = np.array([np.sum([w[key] for w in r["bins"]["windows"][windows or slice(None)]], axis=0)
                             for r in records])
    return out


def mechanism(records: List[dict], windows: Optional[slice] = None) -> Dict[str, np.ndarray]:
    """Per bin, the median over seeds of: the share of samples, the mean unweighted distance (NaN for
    an empty bin) and the share of the total weighted loss."""
    t = bin_totals(records, windows)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = t["count"] / t["count"].sum(axis=1, keepdims=True)
        mean_distance = t["distance"] / t["count"]
        loss_share = t["weighted"] / t["weighted"].sum(axis=1, keepdims=True)
    return {"share": np.median(share, axis=0), "mean_distance": _nanmedian_columns(mean_distance, t["count"]),
            "loss_share": np.median(loss_share, axis=0)}


def _nanmedian_columns(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per column, the median over the rows whose count is > 0 (NaN when none is)."""
    out = np.full(values.shape[1], np.nan)
    for j in range(values.shape[1]):
        col = values[counts[:, j] > 0, j]
        if len(col):
            out[j] = np.median(col)
    return out


def bin_centres(edges) -> np.ndarray:
    e = np.asarray(edges, np.float64)
    return np.sqrt(e[:-1] * e[1:])


# --------------------------------------------------------------------------------------------------
# Figures

def _style(cells):
    colours = {"lognormal-ict": "#d62728", "lognormal-sinusoidal": "#ff7f0e", "polynomial-ict": "#1f77b4",
               "polynomial-sinusoidal": "#2ca02c", "polynomial-sinusoidal-predefined": "#9467bd"}
    dashes = {"lognormal-ict": "-", "lognormal-sinusoidal": "--", "polynomial-ict": "-",
              "polynomial-sinusoidal": "--", "polynomial-sinusoidal-predefined": ":"}
    return {c: (colours[c], dashes[c]) for c in cells}


def plot_curves(runs, seeds, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = _style(runs)
    any_record = next(iter(runs.values()))[seeds[0]]
    ref = any_record["reference"]
    panels = ((("one_step", "frechet_distance"), "Frechet distance, 1-step", ref["frechet_distance_test"]),
              (("two_step", "frechet_distance"), "Frechet distance, 2-step", ref["frechet_distance_test"]),
              (("one_step", "kernel_distance"), "kernel distance (KID recipe), 1-step", ref["kernel_distance_test"]),
              (("two_step", "kernel_distance"), "kernel distance (KID recipe), 2-step", ref["kernel_distance_test"]))
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (metric, title, floor) in zip(axes.flat, panels):
        lowest = floor
        for cell, by_seed in runs.items():
            steps, values = curve([by_seed[s] for s in seeds], metric)
            colour, dash = style[cell]
            q25, q50, q75 = np.nanpercentile(values, [25, 50, 75], axis=0)
            ax.plot(steps, q50, dash, color=colour, marker="o", ms=3, label=CELLS[cell]["label"])
            ax.fill_between(steps, q25, q75, color=colour, alpha=0.15, lw=0)
            lowest = min(lowest, float(np.nanmin(q25)))
        ax.axhline(floor, color="k", lw=0.8, ls=":", label="held-out real digits (floor)")
        if lowest > 0:
            ax.set_yscale("log")
        else:       # the unbiased kernel distance can be slightly negative
            ax.set_yscale("symlog", linthresh=max(abs(floor), 1.0))
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("training step")
    axes[0, 0].legend(fontsize=8)
    cfg = any_record["config"]["train"]
    fig.suptitle(f"iCT on 8x8 digits, EMA model; median over {len(seeds)} paired seeds, band: interquartile "
                 f"range\n(width {cfg['width']}, batch {cfg['batch']}, {cfg['steps']} steps; distances in a digits "
                 "classifier's feature space: NOT FID or KID; lower is better)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_mechanism(runs, seeds, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = _style(runs)
    any_record = next(iter(runs.values()))[seeds[0]]
    centres = bin_centres(any_record["bins"]["edges"])
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    panels = ((axes[0, 0], "share", None, "share of training samples per level bin (whole run)"),
              (axes[0, 1], "share", slice(-1, None), "share of training samples per level bin (last window)"),
              (axes[1, 0], "mean_distance", None, "mean pseudo-Huber distance d per bin (unweighted)"),
              (axes[1, 1], "loss_share", None, "share of the weighted loss (lambda d) per bin"))
    for ax, key, windows, title in panels:
        for cell, by_seed in runs.items():
            m = mechanism([by_seed[s] for s in seeds], windows)
            colour, dash = style[cell]
            ax.plot(centres, m[key], dash, color=colour, marker="o", ms=3, label=CELLS[cell]["label"])
        ax.set_xscale("log")
        if key == "mean_distance":
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, which="both")
    for ax in axes[1]:
        ax.set_xlabel("noise level sigma_(i+1) of the student (bin centre)")
    axes[0, 0].legend(fontsize=8)
    last = any_record["bins"]["windows"][-1]
    fig.suptitle(f"Where the training samples and the loss fall: median over {len(seeds)} seeds per bin "
                 f"(last window: steps {last['end_step'] - last['steps'] + 1}-{last['end_step']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------
# Markdown

def _fmt_iqr(values, fmt: str) -> str:
    q50, q25, q75 = median_iqr(values)
    return f"{fmt.format(q50)} [{fmt.format(q25)}, {fmt.format(q75)}]"


def _fmt_diff(d: dict, fmt: str) -> str:
    if "median" not in d:
        return "n/a (a run diverged)"
    lo, hi = d["ci"]
    return f"{fmt.format(d['median'])} [{fmt.format(lo)}, {fmt.format(hi)}]"


def _fmt_ratio(d: dict) -> str:
    if "ratio" not in d:
        return "n/a"
    return f"{d['ratio']:.2f} [{d['ratio_ci'][0]:.2f}, {d['ratio_ci'][1]:.2f}]"


def report_markdown(runs, seeds, settings: dict, left_out: Dict[str, List[int]], image_link: str) -> str:
    any_record = next(iter(runs.values()))[seeds[0]]
    ref = any_record["reference"]
    records = [r for by_seed in runs.values() for s, r in by_seed.items() if s in seeds]
    eval_s = [r["timing"]["eval_seconds"] for r in records]
    cpu_s = np.array([r["timing"]["cpu_seconds"] for r in records])
    diverged = {cell: [s for s in seeds if by_seed[s]["final"] is None] for cell, by_seed in runs.items()}
    lines = [
        BEGIN,
        "",
        f"*Generated by `examples/comparison_report.py` from {len(records)} runs "
        f"({len(runs)} cells x {len(seeds)} paired seeds: {', '.join(map(str, seeds))}); "
        f"{datetime.date.today().isoformat()}.*",
        "",
        "Settings shared by every run: "
        + ", ".join(f"`{k}` {v}" for k, v in sorted(settings.items()) if k != "constant_n")   # no constant N here
        + ".",
        f"Floors (held-out real test digits against the training digits, same sample size as each chunk): "
        f"Frechet distance {ref['frechet_distance_test']:.2f}, kernel distance {ref['kernel_distance_test']:.1f}; "
        f"digits classifier test accuracy {ref['classifier_test_accuracy']:.3f}.",
        f"Cost: {np.median(cpu_s):.0f} s of CPU time per run (median; {cpu_s.sum() / 3600:.2f} CPU hours in all), "
        f"of which evaluation {np.median(eval_s):.0f} s wall; {any_record['timing']['torch_threads']} torch "
        f"thread(s) per run ({any_record['machine']['processor']}, torch {any_record['machine']['torch']}).",
    ]
    if any(left_out.values()):
        lines += ["", "Left out (not finished in every cell): "
                  + "; ".join(f"{CELLS[c]['label']}: seeds {', '.join(map(str, s))}" for c, s in left_out.items() if s)
                  + "."]
    if any(diverged.values()):
        lines += ["", "Diverged (non-finite loss; counted as the worst value): "
                  + "; ".join(f"{CELLS[c]['label']}: seeds {', '.join(map(str, s))}" for c, s in diverged.items() if s)
                  + "."]
    lines += ["", f"### Final metrics ({any_record['config']['final_samples']} samples per run; median "
              "[25th, 75th percentile] over seeds; lower is better except classes)", ""]
    header = ["cell"] + [title for _, title, _ in METRICS] + [f"runs > {POOR:g} (1-step)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell, by_seed in runs.items():
        row = [CELLS[cell]["label"]] + [_fmt_iqr([final_value(by_seed[s], path) for s in seeds], fmt)
                                        for path, _, fmt in METRICS]
        poor = sum(final_value(by_seed[s], ("one_step", "frechet_distance")) > POOR for s in seeds)
        row.append(f"{poor}/{len(seeds)}")
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Runs > {POOR:g}: runs whose final 1-step Frechet distance exceeds {POOR:g} (about 20 times the "
              "floor; a reading aid for the heavy tail, chosen by us, not a criterion of the paper)."]
    kid_se = [r["final"]["one_step"]["kernel_distance_se"] for r in records if r["final"] is not None]
    lines += ["", f"Within one run the kernel distance's standard error (over its "
              f"{any_record['config']['final_samples'] // 360} chunks of 360 samples) is {np.median(kid_se):.1f} "
              f"(median over runs; range {min(kid_se):.1f}-{max(kid_se):.1f}): the spread between seeds is the "
              "larger uncertainty.", ""]

    lines += ["### Paired differences (A - B, seed by seed; negative: A better)", "",
              "Median difference with its bootstrap 95 % interval; wins: seeds where A is better; ratio: geometric "
              "mean of A / B with its bootstrap 95 % interval.", "",
              "| A - B | isolates | Frechet 1-step | wins | ratio 1-step | Frechet 2-step | wins | "
              "kernel dist. 1-step |",
              "|---|---|---|---|---|---|---|---|"]
    for a, b, what in CONTRASTS:
        if a not in runs or b not in runs:
            continue
        cols = []
        for path in (("one_step", "frechet_distance"), ("two_step", "frechet_distance")):
            d = paired_difference([final_value(runs[a][s], path) for s in seeds],
                                  [final_value(runs[b][s], path) for s in seeds])
            cols.append(_fmt_diff(d, "{:+.1f}"))
            cols.append(f"{d['a_better']}/{d['n']}")
            if path[0] == "one_step":
                cols.append(_fmt_ratio(d))
        d = paired_difference([final_value(runs[a][s], ("one_step", "kernel_distance")) for s in seeds],
                              [final_value(runs[b][s], ("one_step", "kernel_distance")) for s in seeds])
        cols.append(_fmt_diff(d, "{:+.0f}"))
        lines.append(f"| {CELLS[a]['label']} - {CELLS[b]['label']} | {what} | " + " | ".join(cols) + " |")

    lines += ["", "### Per seed (final Frechet distance 1-step / 2-step)", "",
              "| cell | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|" + "---|" * (len(seeds) + 1)]
    for cell, by_seed in runs.items():
        cells = []
        for s in seeds:
            r = by_seed[s]
            cells.append("diverged" if r["final"] is None else
                         f"{r['final']['one_step']['frechet_distance']:.1f} / {r['final']['two_step']['frechet_distance']:.1f}")
        lines.append(f"| {CELLS[cell]['label']} | " + " | ".join(cells) + " |")

    lines += ["", "### Learning curves (median Frechet distance 1-step over seeds)", "",
              f"![learning curves]({image_link}/comparison_curves.png)", ""]
    steps = curve([next(iter(runs.values()))[s] for s in seeds], ("one_step", "frechet_distance"))[0]
    lines += ["| cell | " + " | ".join(f"{int(t)}" for t in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for cell, by_seed in runs.items():
        _, values = curve([by_seed[s] for s in seeds], ("one_step", "frechet_distance"))
        lines.append(f"| {CELLS[cell]['label']} | " + " | ".join(f"{v:.0f}" for v in np.nanmedian(values, axis=0))
                     + " |")
    samples_note = (f"{any_record['config']['eval_samples']} samples per point, {any_record['config']['final_samples']} "
                    "at the last")
    lines += ["", f"({samples_note}.)", ""]

    centres = bin_centres(any_record["bins"]["edges"])
    lines += ["### Mechanism: where the samples and the loss fall", "",
              f"![mechanism]({image_link}/comparison_mechanism.png)", "",
              "Share of the training samples (whole run, median over seeds) and share of the weighted loss, by the "
              "student's level sigma_(i+1) (bins grouped by their centre):", "",
              "| cell | " + " | ".join(f"samples {_group(lo, hi)}" for lo, hi in SIGMA_GROUPS) + " | "
              + " | ".join(f"loss {_group(lo, hi)}" for lo, hi in SIGMA_GROUPS) + " |",
              "|" + "---|" * (1 + 2 * len(SIGMA_GROUPS))]
    for cell, by_seed in runs.items():
        m = mechanism([by_seed[s] for s in seeds])
        shares = [m["share"][(centres >= lo) & (centres < hi)].sum() for lo, hi in SIGMA_GROUPS]
        losses = [m["loss_share"][(centres >= lo) & (centres < hi)].sum() for lo, hi in SIGMA_GROUPS]
        lines.append(f"| {CELLS[cell]['label']} | " + " | ".join(f"{100 * v:.0f} %" for v in shares + losses) + " |")
    lines += ["", END]
    return "\n".join(lines)


def _group(lo: float, hi: float) -> str:
    if lo == 0:
        return f"sigma < {hi:g}"
    if hi == float("inf"):
        return f"sigma >= {lo:g}"
    return f"{lo:g}-{hi:g}"


def write_into(path: Path, fragment: str) -> None:
    """Put ``fragment`` (which starts with BEGIN and ends with END) in place of the text between the
    markers of ``path``, keeping the rest; a missing or empty file gets the fragment alone."""
    text = path.read_text() if path.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + fragment + tail
    elif text.strip():
        raise ValueError(f"{path} has no '{BEGIN}' ... '{END}' lines to replace")
    else:
        text = fragment + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        runs = load_runs(args.runs)
        settings = shared_settings(runs)
    except ValueError as error:
        parser.error(f"--runs: {error}")
    seeds = paired_seeds(runs)
    if not seeds:
        parser.error(f"--runs: no seed is finished in every cell ({', '.join(runs)})")
    left_out = {cell: sorted(set(by_seed) - set(seeds)) for cell, by_seed in runs.items()}
    images = Path(args.images)
    plot_curves(runs, seeds, images / "comparison_curves.png")
    plot_mechanism(runs, seeds, images / "comparison_mechanism.png")
    fragment = report_markdown(runs, seeds, settings, left_out, args.image_link)
    try:
        write_into(Path(args.output), fragment)
    except ValueError as error:
        parser.error(f"--output: {error}")
    print(fragment)
    print(f"\nwrote {args.output}, {images}/comparison_curves.png, {images}/comparison_mechanism.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
