"""Resource usage of the CUDA C++ kernels in the built extension, read from its sm_90 code with
cuobjdump -res-usage (no GPU needed): no kernel keeps a stack frame or local memory (register
spills, or arrays the compiler could not keep in registers), and the float32 EMA path fits in 64
registers per thread (two 512-thread blocks per SM). Registers per kernel are printed.

Skipped only when noisefast._C was built without CUDA kernels.
"""
from __future__ import annotations

import os
import re

import pytest

from noisefast import _library

import resource_usage

EMA_FLOAT32_MAX_REGISTERS = 64


def _extension_path():
    if not _library.has_cuda_kernels():
        why = _library.extension_error() or "noisefast._C was built without CUDA kernels"
        pytest.skip(f"no CUDA kernels to inspect: {why}")
    import noisefast._C as ext
    return ext.__file__


def _usage():
    tool = resource_usage.cuobjdump(prefer_toolkit=True)
    assert tool is not None, "no cuobjdump: Triton's wheel ships one (triton/backends/nvidia/bin), or set CUDA_HOME"
    usage = resource_usage.read(_extension_path(), tool)
    assert usage, "cuobjdump found no kernels in the extension"
    return usage, resource_usage.demangle(usage)


def test_cuda_kernels_keep_no_stack_and_no_local_memory(capsys):
    usage, names = _usage()
    with capsys.disabled():
        print(f"\nCUDA C++ kernels of {os.path.basename(_extension_path())} (sm_90):")
        for symbol in sorted(usage, key=lambda s: names[s]):
            u = usage[symbol]
            print(f"  {u.registers:4d} registers  stack {u.stack:3d} B  local {u.local:3d} B  {_short(names[symbol])}")
    bad = [f"{names[s]}: stack {u.stack} B, local {u.local} B" for s, u in usage.items() if u.spills]
    assert not bad, "kernels with a stack frame or local memory:\n" + "\n".join(bad)


def test_float32_ema_kernels_fit_in_64_registers():
    usage, names = _usage()
    ema = {s: u for s, u in usage.items() if "EmaFunctor" in names[s]}
    assert ema, "no EMA kernel found"
    float32 = {s: u for s, u in ema.items() if re.search(r"EmaFunctor<\d+, float, float>", names[s])}
    assert len(float32) == 4, f"expected the float32 EMA kernel for 1..4 profiles, found {len(float32)}"
    over = [f"{names[s]}: {u.registers}" for s, u in float32.items() if u.registers > EMA_FLOAT32_MAX_REGISTERS]
    assert not over, f"float32 EMA kernels above {EMA_FLOAT32_MAX_REGISTERS} registers:\n" + "\n".join(over)


def _short(name: str) -> str:
    """The demangled name without namespaces and metadata parameters, for the table."""
    name = re.sub(r"noisefast::cuda::|\(anonymous namespace\)::|noisefast::", "", name)
    name = re.sub(r"TensorListMeta<(\d+), (\d+)>", r"Meta<\1,\2>", name)
    return re.sub(r"\(.*\)$", "", name)[:150]
