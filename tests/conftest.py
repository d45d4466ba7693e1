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
from noisefast import _library  # noqa: E402

try:  # the property-based tests (tests/test_properties.py)
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is in the `test` extra
    settings = None
if settings is not None:
    # "ci": the same examples on every run (derandomized, no example database), sized so that the
    # whole property suite takes well under two minutes on two cores. "thorough": for a long local run.
    settings.register_profile("ci", derandomize=True, database=None, max_examples=60, deadline=None,
                              print_blob=True, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.data_too_large])
    settings.register_profile("thorough", max_examples=1000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    settings.load_profile(os.environ.get("NOISEFAST_HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    # `triton` tests run Triton kernels on CPU tensors, which only the interpreter can do; on a GPU
    # machine the `cuda` tests run the same kernels on the GPU instead.
    interpreting = _library.has_triton() and _library.triton_interpreting()
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    skip_triton = pytest.mark.skip(reason="Triton on CPU tensors needs TRITON_INTERPRET=1 (set when no GPU is visible)")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)
        if "triton" in item.keywords and not interpreting:
            item.add_marker(skip_triton)
