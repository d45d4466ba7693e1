"""Every Triton kernel variant compiles for sm_90 without spills, under CI's Triton and under
Triton 3.6 (the GPU machine's): tests/triton_aot.py does the work in a subprocess (compiled mode
needs TRITON_INTERPRET unset, and Triton 3.6 needs its own sys.path).

Triton 3.6 comes from a side directory that `make test` fills once
(`pip install --no-deps --target build/triton-3.6.0 triton==3.6.0`, see the Makefile) and names
in NOISEFAST_TRITON36_DIR. Compiled kernels are cached under build/triton-cache/, so a rerun
only compiles what changed.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "triton_aot.py")
TRITON36_DEFAULT = os.path.join(ROOT, "build", "triton-3.6.0")
TIMEOUT_S = 900


def _triton36_dir():
    """The Triton 3.6 directory, or pytest.skip when it was never installed (outside `make test`)."""
    named = os.environ.get("NOISEFAST_TRITON36_DIR")
    path = named or TRITON36_DEFAULT
    if not os.path.isdir(os.path.join(path, "triton")):
        if named:  # make test named it: a missing install is a failure, not a skip
            pytest.fail(f"NOISEFAST_TRITON36_DIR={named} holds no triton package")
        pytest.skip(f"Triton 3.6.0 is not installed in {path}: `make triton36` (part of `make test`) installs it")
    return path


def run_aot_check(triton_path, label, tmp_path):
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.setdefault("TRITON_CACHE_DIR", os.path.join(ROOT, "build", "triton-cache", label))
    out = tmp_path / f"aot-{label}.json"
    command = [sys.executable, SCRIPT, "--json", str(out)]
    if triton_path:
        command += ["--triton-path", triton_path]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    summary = json.loads(out.read_text()) if out.exists() else None
    return done, summary


@pytest.mark.parametrize("which", ["ci", "3.6.0"])
def test_every_triton_variant_compiles_for_sm90_without_spills(which, tmp_path, capsys):
    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    triton_path = _triton36_dir() if which == "3.6.0" else None
    done, summary = run_aot_check(triton_path, which, tmp_path)
    with capsys.disabled():  # registers per kernel, in the CI log whether or not the test fails
        print("\n" + done.stdout.split("\nFAIL", 1)[0].rstrip())
    assert done.returncode == 0 and summary is not None, (
        f"AOT check failed under Triton {which}:\n{done.stdout[-20000:]}\n{done.stderr[-5000:]}")
    if which == "3.6.0":
        assert summary["triton"] == "3.6.0", f"the side directory gave Triton {summary['triton']}"
    assert summary["results"], "no kernel variant was compiled"
