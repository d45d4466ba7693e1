#!/usr/bin/env python3
"""`make gpu-check`: everything a GPU machine should run for noisefast, as ONE command of at most
8 minutes (a GPU is lent rarely, for about 15 minutes of device time, 10 minutes per command).

    NOISEFAST_COMMIT=<commit> OUT=<dir> python3 .ci/gpu_check.py [--budget S] [--dry-run]

Stages, in order, each capped in time and all within one budget (default 470 s); a stage starts
only if it can have its minimum time, and a stage whose input failed is skipped:

  env          Python, torch, Triton, the GPU, the commit measured
  build        setup.py build_ext --inplace for sm_90 on every core, then an import check
  resources    tests/test_cuda_resources.py on that build (registers; no stack, no spills)
  cuda-tests   the `cuda` tests, in parallel shards (Triton's compiles are the slow part)
  memcheck     compute-sanitizer memcheck over the `cuda` tests of the CUDA C++ kernels
  copy         the device copy bandwidth (benchmarks/results/<device>/copy_bandwidth.json)
  bench        the headline benchmarks, one size each, with torch.compile baselines
  bench-sweep  the other benchmark cases without torch.compile, in the time left

Outputs go to $OUT (build/gpu-check/ when OUT is unset), flat, never more than 8 files, each under
16 MiB: summary.md (rewritten after every stage: status and seconds of each), build.log,
tests.log, memcheck.log, bench.log (written as the stages run), junit.xml, benchmarks.tar.gz
(benchmarks/results/<device>/), and the built extension (a later session can carry it instead of
rebuilding). The tree on a GPU machine has no .git: pass the commit in NOISEFAST_COMMIT.

--only STAGE,STAGE reruns some stages (the build is incremental; stages left out count as done
for the ones that need them). --dry-run skips every stage that needs a GPU (reported as skipped)
and runs the rest of the plumbing: tests/test_gpu_check.py runs it in CI so that this command
stays runnable.
"""
from __future__ import annotations

import argparse
import datetime
import glob
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_BUDGET_S = 470
MAX_FILES = 8
MAX_FILE_BYTES = 16 * 1024 * 1024
OUTPUT_FILES = ("summary.md", "build.log", "tests.log", "memcheck.log", "bench.log", "junit.xml",
                "benchmarks.tar.gz", "extension")  # "extension": the built noisefast/_C*.so, under its own name
# The cuda tests of the CUDA C++ kernels (randn, gaussian_noise, foreach_gaussian_noise_, EMA) for memcheck,
# without graph capture and the 2^31-element case (minutes under the sanitizer).
MEMCHECK_FILES = ("tests/test_randn.py", "tests/test_gaussian_noise.py", "tests/test_foreach_gaussian_noise.py",
                  "tests/test_ema_update.py")
MEMCHECK_FILTER = "not graph and not triton and not 2_pow_31"
CUDA_TEST_SHARDS = 4
BENCH_PARTS = ("training", "noise")  # benchmarks/run.py PARTS; the headline EMA/loss/pipeline first


class Stage:
    def __init__(self, name, cap_s, min_s, needs_gpu, log, run, needs=()):
        self.name, self.cap_s, self.min_s, self.needs_gpu, self.log = name, cap_s, min_s, needs_gpu, log
        self.run, self.needs = run, needs
        self.status, self.seconds, self.note = "pending", 0.0, ""


class Check:
    """One gpu-check run: the stages, the budget, the output directory."""

    def __init__(self, out_dir, budget_s, dry_run, only=None):
        self.out, self.budget_s, self.dry_run, self.only = out_dir, budget_s, dry_run, only
        self.start = time.monotonic()
        self.work = os.path.join(ROOT, "build", "gpu-check-work")
        self.python = sys.executable
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.env.pop("TRITON_INTERPRET", None)
        self.env.setdefault("NOISEFAST_COMMIT", commit())
        self.device = "no GPU"
        self.results_dir = None
        self.stages = [
            Stage("env", 30, 5, False, "build.log", self.stage_env),
            Stage("build", 240, 60, True, "build.log", self.stage_build),
            Stage("resources", 60, 15, True, "tests.log", self.stage_resources, needs=("build",)),
            Stage("cuda-tests", 170, 60, True, "tests.log", self.stage_cuda_tests, needs=("build",)),
            Stage("memcheck", 80, 40, True, "memcheck.log", self.stage_memcheck, needs=("build",)),
            Stage("copy", 40, 10, True, "bench.log", self.stage_copy, needs=("build",)),
            Stage("bench", 170, 60, True, "bench.log", self.stage_bench, needs=("build",)),
            Stage("bench-sweep", 150, 45, True, "bench.log", self.stage_bench_sweep, needs=("build",)),
        ]

    # ---- plumbing -------------------------------------------------------------------------------------

    def path(self, name):
        assert name in OUTPUT_FILES, f"{name} is not one of the {MAX_FILES} output files"
        return os.path.join(self.out, name)

    def left_s(self):
        return self.budget_s - (time.monotonic() - self.start)

    def run_command(self, command, log, cap_s, env=None, cwd=ROOT):
        """Run command (its output appended to log as it comes), killed with its children after
        cap_s. Returns the exit status, or None on timeout."""
        with open(log, "a") as f:
            f.write(f"\n$ {' '.join(command)}\n")
            f.flush()
            process = subprocess.Popen(command, cwd=cwd, env=env or self.env, stdout=f, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                return process.wait(timeout=cap_s)
            except subprocess.TimeoutExpired:
                kill_group(process)
                f.write(f"\n[gpu-check] killed after {cap_s:.0f} s\n")
                return None

    def write_summary(self):
        lines = [f"# gpu-check: {self.device}", "",
                 f"commit {self.env['NOISEFAST_COMMIT']}, {datetime.datetime.now().isoformat(timespec='seconds')}, "
                 f"budget {self.budget_s:.0f} s, elapsed {time.monotonic() - self.start:.0f} s"
                 + (" (dry run: GPU stages skipped)" if self.dry_run else ""), "",
                 "| stage | status | seconds | cap | log | note |", "|---|---|---:|---:|---|---|"]
        for s in self.stages:
            lines.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {s.cap_s} | {s.log} | {s.note} |")
        files = sorted(os.listdir(self.out))
        lines += ["", f"files in OUT ({len(files)} of at most {MAX_FILES}): {', '.join(files)}", ""]
        with open(self.path("summary.md"), "w") as f:
            f.write("\n".join(lines))

    def run(self):
        os.makedirs(self.out, exist_ok=True)
        shutil.rmtree(self.work, ignore_errors=True)
        os.makedirs(self.work)
        for stage in self.stages:
            failed_inputs = [n for n in stage.needs if self.stage(n).status not in ("pass", "not selected")]
            if self.only is not None and stage.name not in self.only:
                stage.status = "not selected"
            elif stage.needs_gpu and self.dry_run:
                stage.status, stage.note = "skipped", "dry run: needs a GPU"
            elif failed_inputs:
                stage.status, stage.note = "skipped", f"{', '.join(failed_inputs)} did not pass"
            elif self.left_s() < stage.min_s:
                stage.status, stage.note = "skipped", f"out of time ({self.left_s():.0f} s left)"
            else:
                cap = min(stage.cap_s, self.left_s())
                began = time.monotonic()
                print(f"[gpu-check] {stage.name} (cap {cap:.0f} s) ...", flush=True)
                try:
                    stage.status, stage.note = stage.run(self.path(stage.log), cap)
                except Exception as exc:  # a broken stage must not stop the others
                    stage.status, stage.note = "FAIL", f"{type(exc).__name__}: {exc}"
                stage.seconds = time.monotonic() - began
            print(f"[gpu-check] {stage.name}: {stage.status} {stage.note}", flush=True)
            self.write_summary()
        self.pack()
        self.write_summary()
        fit_files(self.out)
        bad = [s for s in self.stages if s.status not in ("pass", "skipped", "not selected")]
        if len(os.listdir(self.out)) > MAX_FILES:
            print(f"[gpu-check] more than {MAX_FILES} files in {self.out}", file=sys.stderr)
            return 1
        return 1 if bad else 0

    def stage(self, name):
        return next(s for s in self.stages if s.name == name)

    def pack(self):
        """benchmarks.tar.gz of the results directory, and the built extension, into OUT."""
        if self.results_dir and os.path.isdir(self.results_dir):
            with tarfile.open(self.path("benchmarks.tar.gz"), "w:gz") as tar:
                tar.add(self.results_dir, arcname=os.path.relpath(self.results_dir, ROOT))
        if self.stage("build").status in ("pass", "not selected") and not self.dry_run:
            for so in glob.glob(os.path.join(ROOT, "noisefast", "_C*.so"))[:1]:
                if os.path.getsize(so) <= MAX_FILE_BYTES:
                    shutil.copy(so, os.path.join(self.out, os.path.basename(so)))

    # ---- stages: each returns (status, note) ----------------------------------------------------------

    def stage_env(self, log, cap):
        code = ("import platform, torch; print('python', platform.python_version(), 'torch', torch.__version__, "
                "'cuda', torch.version.cuda); import importlib.util as u; "
                "print('triton', __import__('triton').__version__ if u.find_spec('triton') else None); "
                "print('gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)")
        status = self.run_command([self.python, "-c", code], log, cap)
        with open(log) as f:
            found = re.findall(r"^gpu (.+)$", f.read(), re.MULTILINE)
        self.device = found[-1] if found and found[-1] != "None" else f"no GPU ({platform.node()})"
        if status != 0:
            return "FAIL", "python/torch do not import"
        return "pass", f"{self.device}; commit {self.env['NOISEFAST_COMMIT']}"

    def stage_build(self, log, cap):
        env = dict(self.env, TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
                   MAX_JOBS=str(os.cpu_count() or 4), CFLAGS=os.environ.get("CFLAGS", "-g0"))
        if "CUDA_HOME" not in env and os.path.isdir("/usr/local/cuda"):
            env["CUDA_HOME"] = "/usr/local/cuda"
        status = self.run_command([self.python, "setup.py", "build_ext", "--inplace"], log, cap, env=env)
        if status is None:
            return "timeout", ""
        if status != 0:
            return "FAIL", "build failed"
        check = ("import sys, noisefast; b = noisefast.backends(); print('backends', b); "
                 "sys.exit(0 if b['cuda'] and b['triton'] else 1)")
        if self.run_command([self.python, "-c", check], log, 60) != 0:
            return "FAIL", "built, but the cuda/triton backends are not available"
        return "pass", ""

    def pytest(self, args, junit):
        return [self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEs", f"--junitxml={junit}", *args]

    def stage_resources(self, log, cap):
        junit = os.path.join(self.work, "junit-resources.xml")
        status = self.run_command(self.pytest(["-s", "tests/test_cuda_resources.py"], junit), log, cap)
        return pytest_status(status)

    def stage_cuda_tests(self, log, cap):
        files = sorted(f for f in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
                       if "mark.cuda" in open(f).read())
        shards = [files[i::CUDA_TEST_SHARDS] for i in range(CUDA_TEST_SHARDS) if files[i::CUDA_TEST_SHARDS]]
        processes = []
        for k, shard in enumerate(shards):
            shard_log = open(os.path.join(self.work, f"tests-{k}.log"), "w")
            command = self.pytest(["-m", "cuda", "--durations=10", *shard], os.path.join(self.work, f"junit-{k}.xml"))
            processes.append((subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=shard_log,
                                               stderr=subprocess.STDOUT, start_new_session=True), shard_log))
        deadline = time.monotonic() + cap
        statuses = []
        for process, shard_log in processes:
            try:
                statuses.append(process.wait(timeout=max(deadline - time.monotonic(), 0.1)))
            except subprocess.TimeoutExpired:
                kill_group(process)
                statuses.append(None)
            shard_log.close()
        with open(log, "a") as out:
            for k in range(len(shards)):
                out.write(f"\n===== cuda tests, shard {k}: {', '.join(os.path.basename(f) for f in shards[k])}\n")
                with open(os.path.join(self.work, f"tests-{k}.log")) as f:
                    out.write(f.read())
        merge_junit(sorted(glob.glob(os.path.join(self.work, "junit-*.xml"))), self.path("junit.xml"))
        if any(s is None for s in statuses):
            return "timeout", f"{statuses.count(None)} of {len(shards)} shards cut off"
        worst = next((s for s in statuses if s not in (0, 5)), 0)
        return pytest_status(worst)

    def stage_memcheck(self, log, cap):
        sanitizer = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
        if not os.path.exists(sanitizer):
            return "FAIL", "compute-sanitizer not found"
        env = dict(self.env, PYTORCH_NO_CUDA_MEMORY_CACHING="1")  # out-of-bounds lands outside a pool
        command = [sanitizer, "--tool", "memcheck", "--error-exitcode", "9", "--print-limit", "30",
                   self.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "-k", MEMCHECK_FILTER,
                   *MEMCHECK_FILES]
        status = self.run_command(command, log, cap, env=env)
        if status is None:
            return "timeout", ""
        if status == 9:
            return "FAIL", "memcheck reported errors"
        return pytest_status(status)

    def bench(self, log, cap, args):
        status = self.run_command([self.python, "-m", "benchmarks.run", *args], log, cap)
        with open(log) as f:
            found = re.findall(r"^results in (.+)$", f.read(), re.MULTILINE)
        if found:
            self.results_dir = os.path.join(ROOT, found[-1])
        return status

    def stage_copy(self, log, cap):
        status = self.bench(log, cap, ["--copy-only"])
        return ("pass", "") if status == 0 else ("timeout", "") if status is None else ("FAIL", "")

    def bench_parts(self, log, cap, select):
        """benchmarks.run --select SELECT, one part (group of files) at a time: each part writes its
        own results file, so a part cut off by the cap loses only itself."""
        deadline = time.monotonic() + cap
        for part in BENCH_PARTS:
            left = deadline - time.monotonic()
            if left < 10:
                return "timeout", f"no time left for part {part}"
            status = self.bench(log, left, ["--select", select, "--part", part])
            if status is None:
                return "timeout", f"part {part} cut off"
            if status not in (0, 5):
                return pytest_status(status, failed_is=f"part {part}: some benchmarks failed")
        return "pass", ""

    def stage_bench(self, log, cap):
        return self.bench_parts(log, cap, "headline")

    def stage_bench_sweep(self, log, cap):
        return self.bench_parts(log, cap, "sweep")


def pytest_status(status, failed_is="tests failed"):
    if status is None:
        return "timeout", ""
    if status == 0:
        return "pass", ""
    if status == 5:
        return "FAIL", "no tests collected"
    return "FAIL", f"{failed_is} (exit {status})"


def kill_group(process):
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def merge_junit(paths, dest):
    """One <testsuites> holding the <testsuite> elements of every pytest junit file."""
    merged = ET.Element("testsuites")
    for path in paths:
        try:
            root = ET.parse(path).getroot()
        except (ET.ParseError, OSError):
            continue
        merged.extend(root.iter("testsuite") if root.tag == "testsuites" else [root])
    ET.ElementTree(merged).write(dest, encoding="utf-8", xml_declaration=True)


def fit_files(out_dir):
    """Keep every file under the size limit: a log keeps its last 15 MiB; anything else too large
    is removed."""
    for name in os.listdir(out_dir):
        path = os.path.join(out_dir, name)
        if os.path.getsize(path) <= MAX_FILE_BYTES:
            continue
        if name.endswith(".log"):
            with open(path, "rb") as f:
                f.seek(-15 * 1024 * 1024, os.SEEK_END)
                tail = f.read()
            with open(path, "wb") as f:
                f.write(b"[gpu-check] log cut to its last 15 MiB\n" + tail)
        else:
            os.remove(path)


def commit():
    """The commit measured: NOISEFAST_COMMIT, else git's HEAD, else 'unknown'."""
    if os.environ.get("NOISEFAST_COMMIT"):
        return os.environ["NOISEFAST_COMMIT"]
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10)
        return done.stdout.strip() or "unknown (no .git: set NOISEFAST_COMMIT)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no .git: set NOISEFAST_COMMIT)"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all stages")
    parser.add_argument("--dry-run", action="store_true", help="skip the stages that need a GPU")
    parser.add_argument("--only", help="comma-separated stages to run (the others are left out)")
    args = parser.parse_args(argv)
    out = os.environ.get("OUT") or os.path.join(ROOT, "build", "gpu-check")
    if os.path.isdir(out) and not os.environ.get("OUT"):
        shutil.rmtree(out)
    check = Check(out, args.budget, args.dry_run, None if args.only is None else args.only.split(","))
    unknown = set(check.only or ()) - {s.name for s in check.stages}
    if unknown:
        parser.error(f"unknown stages {sorted(unknown)}; the stages are {[s.name for s in check.stages]}")
    return check.run()


if __name__ == "__main__":
    sys.exit(main())
