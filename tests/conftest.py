"""Test configuration shared by every test module.

Triton kernels run on the CPU through the interpreter when no GPU is visible: TRITON_INTERPRET
must be set before any @triton.jit function is defined, i.e. before noisefast imports Triton.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import noisefast  # noqa: E402,F401


def pytest_collection_modifyitems(config, items):
    available = noisefast.backends()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="needs Triton (a GPU, or TRITON_INTERPRET=1)")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "triton" in item.keywords and not available["triton"]:
            item.add_marker(skip_triton)
