"""`make gpu-check` stays runnable without a GPU: its dry run (GPU stages skipped) writes the
summary and logs, flat and within the file limit of the GPU machine's output folder; the stage
budget, junit merging and size limits work; and the suite runs on a machine without scipy (the
GPU machine has none)."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNNER = os.path.join(ROOT, ".ci", "gpu_check.py")


def _runner_module():
    spec = importlib.util.spec_from_file_location("gpu_check", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _dry_run(tmp_path, *args):
    env = dict(os.environ, OUT=str(tmp_path), NOISEFAST_COMMIT="abc1234")
    done = subprocess.run([sys.executable, RUNNER, "--dry-run", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    summary = (tmp_path / "summary.md").read_text() if (tmp_path / "summary.md").exists() else ""
    return done, summary


def _stage_rows(summary):
    rows = re.finditer(r"^\| ([a-z-]+) \| ([a-z A-Z]+) \|", summary, re.MULTILINE)
    return {m.group(1): m.group(2) for m in rows if m.group(1) != "stage"}


def test_dry_run_writes_the_summary_and_stays_within_the_output_limits(tmp_path):
    done, summary = _dry_run(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    runner = _runner_module()
    rows = _stage_rows(summary)
    assert list(rows) == [s.name for s in runner.Check(str(tmp_path), 1, True).stages]
    assert rows["env"] == "pass"
    assert all(status == "skipped" for name, status in rows.items() if name != "env")
    assert "commit abc1234" in summary and "dry run" in summary
    entries = list(tmp_path.iterdir())
    assert len(entries) <= runner.MAX_FILES and all(p.is_file() for p in entries)
    assert {p.name for p in entries} <= set(runner.OUTPUT_FILES)
    assert "torch" in (tmp_path / "build.log").read_text()  # the env stage's versions, logged


def test_stages_that_cannot_have_their_minimum_time_are_skipped(tmp_path):
    done, summary = _dry_run(tmp_path, "--budget", "1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"^\| env \| skipped \|.*out of time", summary, re.MULTILINE)


def test_only_leaves_the_other_stages_out(tmp_path):
    done, summary = _dry_run(tmp_path, "--only", "env,memcheck")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = _stage_rows(summary)
    assert rows["env"] == "pass" and rows["memcheck"] == "skipped" and rows["build"] == "not selected"
    bad, _ = _dry_run(tmp_path, "--only", "nonsense")
    assert bad.returncode != 0 and "unknown stages" in bad.stderr


def test_stage_caps_kill_the_command_and_its_children(tmp_path):
    runner = _runner_module()
    check = runner.Check(str(tmp_path), 60, True)
    log = tmp_path / "build.log"
    status = check.run_command(["bash", "-c", "sleep 30 & sleep 30"], str(log), 1)
    assert status is None and "killed after 1 s" in log.read_text()


def test_junit_files_merge_into_one(tmp_path):
    runner = _runner_module()
    for k in range(2):
        (tmp_path / f"j{k}.xml").write_text(
            f'<testsuites><testsuite name="pytest" tests="1"><testcase name="t{k}"/></testsuite></testsuites>')
    runner.merge_junit([str(tmp_path / "j0.xml"), str(tmp_path / "j1.xml"), str(tmp_path / "missing.xml")],
                       str(tmp_path / "junit.xml"))
    root = ET.parse(tmp_path / "junit.xml").getroot()
    assert root.tag == "testsuites" and [c.get("name") for c in root.iter("testcase")] == ["t0", "t1"]


def test_files_over_the_size_limit_are_cut_or_dropped(tmp_path):
    runner = _runner_module()
    big = b"x" * (runner.MAX_FILE_BYTES + 10)
    (tmp_path / "tests.log").write_bytes(big[:-1] + b"END")
    (tmp_path / "benchmarks.tar.gz").write_bytes(big)
    runner.fit_files(str(tmp_path))
    assert not (tmp_path / "benchmarks.tar.gz").exists()
    log = (tmp_path / "tests.log").read_bytes()
    assert len(log) <= runner.MAX_FILE_BYTES and log.endswith(b"END")


def test_make_gpu_check_runs_the_runner():
    done = subprocess.run(["make", "-n", "gpu-check", "GPU_PYTHON=python3"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "python3 .ci/gpu_check.py" in done.stdout


def test_the_cuda_tests_do_not_need_scipy(tmp_path):
    """The GPU machine has no scipy: a test module that needs it for some tests must not skip the
    others (tests/test_schedules.py once skipped its CUDA test with the whole module)."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nfor name in ('scipy', 'mpmath'):\n    sys.modules[name] = None\n")
    env = dict(os.environ, PYTHONPATH=f"{blocker}{os.pathsep}{ROOT}")
    junit = tmp_path / "junit.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           "tests/test_schedules.py", "-k", "cuda or karras_pinned or chi_square"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    outcome = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        skipped = case.find("skipped")
        outcome[case.get("name")] = "passed" if skipped is None else skipped.get("message", "")
    cuda = {name: o for name, o in outcome.items() if name.startswith("test_cuda")}
    assert cuda and all(o == "passed" or "needs a CUDA device" in o for o in cuda.values()), cuda
    assert any("needs scipy" in o for o in outcome.values()), outcome
    assert outcome.get("test_karras_pinned_n11") == "passed", outcome
