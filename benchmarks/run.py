"""`make bench`: run every benchmark on this machine's device and write the report.

    python -m benchmarks.run [-k EXPR] [--out DIR] [--part noise|training] [--select all|headline|sweep]
                             [--copy-only]

Writes benchmarks/results/<device>/: results.json (pytest-benchmark), report.md (a table per op:
time of each provider, noisefast's speed-up over eager and torch.compile, achieved GB/s of the
bytes the op must move and % of the copy bandwidth measured in the same run), summary.md (the
README's table), throughput.png, and copy_bandwidth.json (with device, date, commit). With
--readme the summary replaces the README's benchmark table. When $OUT is set the directory is
copied there too (for GPU runs).

--part runs one group of benchmark files into results-<part>.json; --select runs the headline
cases only (one size each of the consistency step, pseudo-Huber forward + backward, EMA,
gaussian_noise and the iCT pipeline, torch.compile included: benchmarks/common.py, HEADLINE) or the
sweep (every other case, without torch.compile, whose compiles take up to a minute each) into
results-[<part>-]<select>.json; the report combines every results*.json of the directory (a later file's
rows replace an earlier one's). --copy-only measures the copy bandwidth and stops. `make
gpu-check` (.ci/gpu_check.py) runs --copy-only, then the headline, then the sweep, and packs the
results directory into $OUT. The commit recorded is NOISEFAST_COMMIT when set (a tree without
.git), else git's HEAD.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

import torch

from .common import PROVIDERS as BASE_PROVIDERS
from .common import SELECTIONS, bench_device, device_name, synchronize

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PARTS = {
    "noise": ["bench_randn.py", "bench_gaussian_noise.py", "bench_perturbation.py", "bench_foreach_gaussian_noise.py",
              "bench_mix_rows.py", "bench_overhead.py"],
    "training": ["bench_ema_update.py", "bench_pseudo_huber.py", "bench_consistency_output.py", "bench_pipeline.py"],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def measure_copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device-to-device copy (bytes read + written), best of several."""
    numel = (1 << 28) if device.type == "cuda" else (1 << 25)  # 1 GiB on GPU, 128 MiB on CPU
    src = torch.empty(numel, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    dst.copy_(src)
    synchronize(device)
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        dst.copy_(src)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * src.element_size() / best


def git_commit() -> str:
    if os.environ.get("NOISEFAST_COMMIT"):
        return os.environ["NOISEFAST_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def results_files(out_dir: str):
    """The pytest-benchmark files of out_dir (results.json, results-<part>.json), oldest first."""
    names = [n for n in os.listdir(out_dir) if re.fullmatch(r"results(-[a-z0-9_-]+)?\.json", n)]
    return sorted((os.path.join(out_dir, n) for n in names), key=os.path.getmtime)


def load_all_rows(out_dir: str):
    """Rows of every results file; a case measured again in a later file replaces the earlier row."""
    rows = {}
    for path in results_files(out_dir):
        for r in load_rows(path):
            rows[(r["op"], r["provider"], r["numel"], r["dtype"], r["variant"])] = r
    return list(rows.values())


def load_rows(results_json: str):
    with open(results_json) as f:
        data = json.load(f)
    rows = []
    for b in data["benchmarks"]:
        info = b["extra_info"]
        if "op" not in info:
            continue
        variant = {k: v for k, v in info.items()
                   if k not in ("op", "provider", "numel", "dtype", "bytes", "device", "compile_s")}
        rows.append(dict(op=info["op"], provider=info["provider"], numel=info["numel"], dtype=info["dtype"],
                         bytes=info["bytes"], variant=", ".join(f"{k}={v}" for k, v in sorted(variant.items())),
                         median_s=b["stats"]["median"], compile_s=info.get("compile_s")))
    return rows


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    return f"{seconds * 1e3:.2f} ms"


CPU_CAVEAT = ("On a CPU, working sets that fit the last-level cache can exceed the copy bandwidth "
              "(measured on 128 MiB, from DRAM), so the % column reads above 100% there; and torch's "
              "per-tensor parallel regions (the eager EMA loop, _foreach ops) slow down sharply when "
              "other processes share the cores, which inflates those ratios on a busy machine.")


def render_report(rows, *, device: str, copy_bw: float, commit: str, date: str) -> str:
    lines = [f"# noisefast benchmarks on {device}", "",
             f"Date {date}, commit {commit}. Copy bandwidth measured in the same run: "
             f"{copy_bw / 1e9:.1f} GB/s (bytes read + written).", "",
             "Times are medians. Speed-up = provider time / noisefast time. GB/s counts the bytes the op "
             "must move (inputs read once, outputs written once) over noisefast's time.", ""]
    if device.startswith("cpu"):
        lines += [CPU_CAVEAT, ""]
    groups = {}
    for r in rows:
        groups.setdefault(r["op"], {}).setdefault((r["variant"], r["dtype"], r["numel"]), {})[r["provider"]] = r
    for op, cases in sorted(groups.items()):
        # Providers besides eager/compile/noisefast (the peers a benchmark measures, e.g. "peer") get
        # a column and a "vs" column of their own.
        others = sorted({p for by in cases.values() for p in by} - set(BASE_PROVIDERS))
        columns = ["eager", "compile", *others]
        titles = ["eager", "torch.compile", *others]
        lines += [f"## {op}", "",
                  "| case | dtype | elements | " + " | ".join(titles) + " | noisefast | "
                  + " | ".join(f"vs {t.replace('torch.', '')}" for t in titles) + " | GB/s | % of copy |",
                  "|---|---|---:|" + "---:|" * (2 * len(columns) + 3)]
        for (variant, dtype, numel), by in sorted(cases.items()):
            nf = by.get("noisefast")

            def cell(r):
                return fmt_time(r["median_s"]) if r else "-"

            def ratio(r):
                return f"{r['median_s'] / nf['median_s']:.2f}x" if (r and nf) else "-"

            times = " | ".join(cell(by.get(c)) for c in columns)
            if nf:
                gbs = nf["bytes"] / nf["median_s"] / 1e9
                ratios = " | ".join(ratio(by.get(c)) for c in columns)
                lines.append(f"| {variant or '-'} | {dtype} | {numel:,} | {times} | {cell(nf)} | {ratios} | "
                             f"{gbs:.1f} | {100 * gbs * 1e9 / copy_bw:.0f}% |")
            else:
                lines.append(f"| {variant or '-'} | {dtype} | {numel:,} | {times} | - | "
                             + " | ".join("-" for _ in columns) + " | - | - |")
        compile_times = sorted({r["compile_s"] for r in rows if r["op"] == op and r.get("compile_s")})
        if compile_times:
            lines += ["", f"torch.compile's first call (compile time, not counted above): "
                          f"{min(compile_times):.1f} to {max(compile_times):.1f} s."]
        lines.append("")
    return "\n".join(lines)


def readme_summary(rows, *, device: str, copy_bw: float, commit: str, date: str) -> str:
    """One line per (op, case, dtype) at the largest size measured: the README's benchmark table."""
    largest = {}
    for r in rows:
        key = (r["op"], r["variant"], r["dtype"])
        largest[key] = max(largest.get(key, 0), r["numel"])
    lines = [f"Measured on {device}, {date}, commit {commit}; copy bandwidth {copy_bw / 1e9:.1f} GB/s "
             f"(full tables: `benchmarks/results/{slug(device)}/report.md`).", ""]
    if device.startswith("cpu"):
        lines += [CPU_CAVEAT, ""]
    lines += [
             "| op | case | dtype | elements | vs eager | vs torch.compile | % of copy bandwidth |",
             "|---|---|---|---:|---:|---:|---:|"]
    for (op, variant, dtype), numel in sorted(largest.items()):
        by = {r["provider"]: r for r in rows
              if (r["op"], r["variant"], r["dtype"], r["numel"]) == (op, variant, dtype, numel)}
        nf = by.get("noisefast")
        if not nf:
            continue
        ratio = {p: (f"{by[p]['median_s'] / nf['median_s']:.2f}x" if p in by else "-") for p in ("eager", "compile")}
        pct = 100 * nf["bytes"] / nf["median_s"] / copy_bw
        lines.append(f"| {op} | {variant or '-'} | {dtype} | {numel:,} | {ratio['eager']} | {ratio['compile']} | {pct:.0f}% |")
    return "\n".join(lines)


def update_readme(summary: str) -> None:
    path = os.path.join(ROOT, "README.md")
    with open(path) as f:
        text = f.read()
    start, end = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
    if start not in text or end not in text:
        raise SystemExit("README.md has no bench-table markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as f:
        f.write(f"{head}{start}\n{summary}\n{end}{tail}")


def write_reports(out_dir: str, *, readme: bool) -> None:
    """(Re)write report.md, summary.md and throughput.png from out_dir's results*.json."""
    with open(os.path.join(out_dir, "copy_bandwidth.json")) as f:
        meta = json.load(f)
    rows = load_all_rows(out_dir)
    kwargs = dict(device=meta["device"], copy_bw=meta["bytes_per_s"], commit=meta.get("commit", "unknown"),
                  date=meta.get("date", "unknown"))
    with open(os.path.join(out_dir, "report.md"), "w") as f:
        f.write(render_report(rows, **kwargs))
    summary = readme_summary(rows, **kwargs)
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write(summary + "\n")
    plot_throughput(rows, os.path.join(out_dir, "throughput.png"), meta["device"])
    if readme:
        update_readme(summary)


def plot_throughput(rows, path: str, device: str) -> None:
    """GB/s against size, one panel per op, one line per (provider, case), float32 rows only."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no throughput plot", file=sys.stderr)
        return
    rows = [r for r in rows if r["dtype"] == "float32"]
    ops = sorted({r["op"] for r in rows})
    if not ops:
        return
    cols = min(3, len(ops))
    nrows = (len(ops) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
    styles = {"eager": "o--", "compile": "s-.", "noisefast": "^-"}
    for ax, op in zip(axes.flat, ops):
        lines = {}
        for r in rows:
            if r["op"] == op:
                lines.setdefault((r["provider"], r["variant"]), []).append((r["numel"], r["bytes"] / r["median_s"] / 1e9))
        for (provider, variant), pts in sorted(lines.items()):
            pts.sort()
            label = provider if not variant else f"{provider} ({variant})"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], styles.get(provider, "-"), label=label)
        ax.set_xscale("log")
        ax.set_title(op)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s of the bytes the op must move")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(ops):]:
        ax.axis("off")
    fig.suptitle(f"noisefast throughput (float32), {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", default=None, help="pytest -k expression to run a subset")
    parser.add_argument("--out", default=None, help="results directory (default benchmarks/results/<device>)")
    parser.add_argument("--readme", action="store_true", help="also write the summary table into README.md")
    parser.add_argument("--report-only", metavar="DIR", default=None,
                        help="only re-render the reports (and with --readme the README table) from DIR's results")
    parser.add_argument("--part", choices=sorted(PARTS), default=None,
                        help="run only this group of benchmark files, into results-<part>.json")
    parser.add_argument("--select", choices=SELECTIONS, default="all",
                        help="headline: the headline cases only (torch.compile included); sweep: the others, "
                             "without torch.compile (into results-<select>.json)")
    parser.add_argument("--copy-only", action="store_true", help="measure the copy bandwidth and stop")
    args = parser.parse_args(argv)
    if args.report_only:
        write_reports(args.report_only, readme=args.readme)
        return 0

    device = bench_device()
    name = device_name(device)
    out_dir = args.out or os.path.join(HERE, "results", slug(name))
    os.makedirs(out_dir, exist_ok=True)
    copy_bw = measure_copy_bandwidth(device)
    with open(os.path.join(out_dir, "copy_bandwidth.json"), "w") as f:
        json.dump({"device": name, "bytes_per_s": copy_bw, "date": datetime.date.today().isoformat(),
                   "commit": git_commit(), "torch": torch.__version__}, f, indent=1)
    print(f"{name}: copy bandwidth {copy_bw / 1e9:.1f} GB/s", flush=True)
    print(f"results in {os.path.relpath(out_dir, ROOT)}", flush=True)
    if args.copy_only:
        return 0

    suffix = "-".join(x for x in (args.part, None if args.select == "all" else args.select) if x)
    results_json = os.path.join(out_dir, f"results-{suffix}.json" if suffix else "results.json")
    targets = [os.path.join(HERE, f) for f in PARTS[args.part]] if args.part else [HERE]
    cmd = [sys.executable, "-m", "pytest", *targets, "-q", "-p", "no:cacheprovider", "-o", "python_files=bench_*.py",
           "-o", "testpaths=benchmarks", f"--benchmark-json={results_json}", "--benchmark-disable-gc",
           "--benchmark-columns=median,ops"]
    if args.k:
        cmd += ["-k", args.k]
    status = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, NOISEFAST_BENCH_SELECT=args.select)).returncode
    if status not in (0, 1) or not os.path.exists(results_json):
        print(f"benchmarks failed to run (pytest exit {status})", file=sys.stderr)
        return status or 1

    write_reports(out_dir, readme=args.readme)
    print(f"report written to {os.path.relpath(out_dir, ROOT)}/report.md")
    return status


if __name__ == "__main__":
    sys.exit(main())
