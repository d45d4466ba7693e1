"""Per-kernel GPU resource usage from compiled code, read with ``cuobjdump -res-usage``.

Shared by the Triton AOT check (tests/triton_aot.py: the cubin of each compiled variant) and the
CUDA C++ check (tests/test_cuda_resources.py: the fatbins inside noisefast/_C*.so). cuobjdump
reports, per kernel, REG (registers per thread), STACK (bytes of per-thread stack frame) and LOCAL
(bytes of per-thread local memory): a kernel that spills registers or keeps an array in local
memory shows STACK or LOCAL above zero. Triton wheels ship cuobjdump
(triton/backends/nvidia/bin/), so no CUDA toolkit is needed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from typing import Dict, NamedTuple, Optional


class Usage(NamedTuple):
    registers: int
    stack: int   # bytes per thread
    local: int   # bytes per thread
    shared: int  # bytes per block (static)

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


_FUNCTION = re.compile(r"^\s*Function (\S+):\s*$")
_FIELDS = re.compile(r"\b(REG|STACK|SHARED|LOCAL):(\d+)")


def cuobjdump(triton_module=None, prefer_toolkit: bool = False) -> Optional[str]:
    """Path of a cuobjdump: the one inside ``triton_module`` (default: the importable Triton) or the
    CUDA toolkit's (CUDA_HOME, PATH), in that order or, with ``prefer_toolkit``, the other (an
    older cuobjdump may not read a newer compiler's output: read nvcc's code with the toolkit's
    when there is one, Triton's with Triton's); None when there is none."""
    if triton_module is None:
        try:
            import triton as triton_module
        except ImportError:
            triton_module = None
    bundled = []
    if triton_module is not None:
        bundled.append(os.path.join(os.path.dirname(triton_module.__file__), "backends", "nvidia", "bin",
                                    "cuobjdump"))
    toolkit = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "cuobjdump"),
               shutil.which("cuobjdump") or ""]
    for path in (toolkit + bundled if prefer_toolkit else bundled + toolkit):
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def parse(text: str) -> Dict[str, Usage]:
    """{kernel symbol: Usage} from the output of ``cuobjdump -res-usage`` (the last entry wins when
    a symbol appears in several fatbins; noisefast builds one architecture)."""
    usage: Dict[str, Usage] = {}
    name = None
    for line in text.splitlines():
        match = _FUNCTION.match(line)
        if match:
            name = match.group(1)
            continue
        if name is not None:
            fields = dict((key, int(value)) for key, value in _FIELDS.findall(line))
            if "REG" in fields:
                usage[name] = Usage(fields["REG"], fields.get("STACK", 0), fields.get("LOCAL", 0),
                                    fields.get("SHARED", 0))
                name = None
    return usage


def read(path: str, tool: str) -> Dict[str, Usage]:
    """Resource usage of every kernel in ``path`` (a cubin, or an ELF holding fatbins)."""
    done = subprocess.run([tool, "-res-usage", path], capture_output=True, text=True, check=True)
    return parse(done.stdout)


def demangle(names):
    """{mangled: readable} through c++filt when it is there (names stay as they are otherwise)."""
    names = list(names)
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    done = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True)
    readable = done.stdout.splitlines()
    return dict(zip(names, readable)) if len(readable) == len(names) else {n: n for n in names}
