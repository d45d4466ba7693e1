"""Backend selection, forced backends, and the fallback when the compiled extension is missing."""
import subprocess
import sys
import textwrap

import pytest
import torch

import noisefast
from noisefast import _library


def test_backends_report():
    available = noisefast.backends()
    assert set(available) == {"reference", "cpu", "cuda", "triton"}
    assert available["reference"] is True
    assert available["cpu"] is True, f"the extension should be built for the tests: {_library.extension_error()}"
    assert available["cuda"] == (torch.cuda.is_available() and _library.has_cuda_kernels())


def test_cpu_tensors_default_to_the_cpu_kernel():
    assert noisefast.ops.gaussian_noise.KERNELS.backend_for(torch.device("cpu")) == "cpu"


def test_use_backend_validates_its_name():
    with pytest.raises(ValueError, match="name"):
        with noisefast.use_backend("gpu"):
            pass


def test_forced_backend_that_cannot_serve_the_device_raises():
    with noisefast.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="cuda"):
            noisefast.gaussian_noise(torch.zeros(3), 1.0)


def test_forced_backend_is_scoped_and_restored():
    with noisefast.use_backend("reference"):
        assert _library.forced_backend() == "reference"
        with noisefast.use_backend("cpu"):
            assert _library.forced_backend() == "cpu"
        assert _library.forced_backend() == "reference"
    assert _library.forced_backend() is None


def test_forcing_a_kernel_an_op_does_not_have():
    # philox_words has no CUDA C++ kernel
    kernels = noisefast.ops.randn.WORD_KERNELS
    with noisefast.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="no 'cuda' kernel"):
            kernels.backend_for(torch.device("cuda"))


def test_without_the_extension_noisefast_falls_back_and_warns_once():
    script = textwrap.dedent("""
        import sys, warnings
        sys.modules["noisefast._C"] = None  # make `from noisefast import _C` fail
        import torch, noisefast
        from noisefast.reference.philox import normal_stream
        assert noisefast.backends()["cpu"] is False
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            z = noisefast.randn(10, seed=3)
            noisefast.randn(10, seed=4)
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1, messages
        assert "reference" in messages[0] and "pip install --no-build-isolation" in messages[0], messages[0]
        assert torch.equal(z, normal_stream(10, 3))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def _all_kernels():
    import importlib
    import pkgutil

    import noisefast.ops

    found = {}  # by identity: an op module may import another's Kernels
    for info in pkgutil.iter_modules(noisefast.ops.__path__):
        module = importlib.import_module(f"noisefast.ops.{info.name}")
        found.update((id(value), value) for value in vars(module).values() if isinstance(value, _library.Kernels))
    return list(found.values())


def test_every_compiled_op_has_its_schema_from_python_and_its_kernels_registered():
    kernels = _all_kernels()
    assert len(kernels) == 16, [k.name for k in kernels]
    with_cuda = _library.has_cuda_kernels()
    for k in kernels:
        qualified = f"noisefast_C::{k.name}"
        schema = str(getattr(torch.ops.noisefast_C, k.name).default._schema)
        assert schema == "noisefast_C::" + _library.kernel_schema(k.op), schema
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CPU"), qualified
        if with_cuda:
            has_cuda = torch._C._dispatch_has_kernel_for_dispatch_key(qualified, "CUDA")
            assert has_cuda == ("cuda" in k.gpu_preference), qualified


def test_cpp_files_define_no_schema():
    # Schemas are written once, in Python (noisefast/_library.py defines noisefast_C::<op> from the
    # op's own schema); the C++ files only register implementations.
    import pathlib
    import re

    csrc = pathlib.Path(__file__).resolve().parent.parent / "csrc"
    pattern = re.compile(r"TORCH_LIBRARY\s*\(|TORCH_LIBRARY_FRAGMENT|\bm\.def\s*\(")
    offenders = [str(p.relative_to(csrc)) for p in csrc.rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh")
                 and pattern.search(p.read_text())]
    assert not offenders, offenders


# ---- Kernels.call: the eager path that skips the custom op's dispatch ------------------------------

def test_direct_call_equals_the_custom_op_values_and_gradients():
    from noisefast.ops.gaussian_noise import KERNELS, gaussian_noise_op
    from noisefast.ops.perturbation import ADD_NOISE_KERNELS, add_noise_op

    x = torch.randn(3, 4, 5)
    seed = torch.tensor([123], dtype=torch.int64)
    cases = [
        (KERNELS, gaussian_noise_op, lambda s: (x, seed, 1.0, s, 20, 0, 1, 1, False), torch.rand(3) + 0.5),
        (ADD_NOISE_KERNELS, add_noise_op, lambda s: (x, seed, torch.full((3,), 0.9), s, 0.1, 0.2, 20, 5, 0, False),
         torch.rand(3) + 0.5),
    ]
    for kernels, op, args, sigma in cases:
        outs, grads = [], []
        for run in (kernels.call, op):
            s = sigma.clone().requires_grad_()
            out = run(*args(s))
            out = out[0] if isinstance(out, tuple) else out
            (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
            outs.append(out.detach())
            grads.append(s.grad)
            assert out.grad_fn is not None
        assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1]), kernels.name


def test_direct_call_goes_through_the_op_under_fake_tensors_and_subclasses():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from noisefast.ops.gaussian_noise import KERNELS

    calls = []
    original = KERNELS._impl
    KERNELS._impl = lambda *args: calls.append(args) or original(*args)
    try:
        with FakeTensorMode():
            out = noisefast.gaussian_noise(torch.randn(4, 3), 0.5)
        assert out.shape == (4, 3) and not calls  # the fake kernel ran, not the implementation
        noisefast.gaussian_noise(torch.randn(4, 3), 0.5)
        assert len(calls) == 1
    finally:
        KERNELS._impl = original
