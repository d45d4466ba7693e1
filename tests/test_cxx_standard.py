"""The C++ sources must build as C++17 as well as C++20.

torch.utils.cpp_extension picks the language standard from the installed torch: C++20 for the
torch 2.14 of the build machines, C++17 for the torch 2.11 of the GPU machine (gpu.md). The torch
headers here cannot be compiled as C++17, so this checks what can be: every header of ours that
includes no torch or CUDA header, compiled on its own with ``g++ -std=c++17``. (A std::bit_cast in
csrc/cpu/vector_math_cpu.h once broke the GPU machine's build this way.)
"""
import pathlib
import re
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
_TORCH_OR_CUDA = re.compile(r'^\s*#\s*include\s*[<"](ATen|torch|c10|cuda|cuda_)', re.M)


def _plain_headers():
    headers = sorted((ROOT / "csrc" / "include" / "noisefast").glob("*.h")) + sorted((ROOT / "csrc" / "cpu").glob("*.h"))
    return [h for h in headers if not _TORCH_OR_CUDA.search(h.read_text())]


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
@pytest.mark.parametrize("header", _plain_headers(), ids=lambda h: h.name)
def test_header_compiles_as_cxx17(header, tmp_path):
    source = tmp_path / "probe.cpp"
    source.write_text(f'#include "{header}"\nint main() {{ return 0; }}\n')
    result = subprocess.run(
        ["g++", "-std=c++17", "-fsyntax-only", "-Wall", "-I", str(ROOT / "csrc" / "include"), str(source)],
        capture_output=True, text=True)
    assert result.returncode == 0, f"{header.name} does not compile as C++17:\n{result.stderr[-3000:]}"


def test_some_headers_are_checked():
    names = {h.name for h in _plain_headers()}
    assert {"philox.h", "vector_math_cpu.h"} <= names
