"""CUDA-graph safety of the random ops and the training-step ops.

On a GPU (``cuda`` tests): each random op captured in ``torch.cuda.graph`` and replayed gives fresh
noise on every replay, and the values the stream defines (a replay after ``torch.cuda.manual_seed(s)``
equals the eager call after the same seeding); capture runs with
``torch.cuda.set_sync_debug_mode("error")``, so a host synchronisation inside a step fails.

Without a GPU: what makes a capture fail can still be seen. The ops run on fake CUDA tensors
(FakeTensorMode) as if a graph were being captured (``torch.cuda.is_current_stream_capturing``
patched to True, which turns off the host-side value checks exactly as during a real capture),
with the op bodies and the Triton launchers running for real and only the kernel launches
intercepted (a Triton launch, or the call of a CUDA C++ kernel ``torch.ops.noisefast_C.<op>``,
which returns what the op's fake kernel returns); every aten call is inspected: a host read of a
device value (``.item()``, ``bool(t)``, ...) or a host-to-device copy fails the test. The list ops
that call their backend directly (``Kernels.run_in_place``: foreach_gaussian_noise_,
ema_update_multi_) take that eager branch here as they do during a real capture.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from unittest import mock

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import noisefast

aten = torch.ops.aten

# aten calls that read a device value on the host (a synchronisation; refused under capture).
HOST_READS = {aten._local_scalar_dense, aten.is_nonzero, aten.equal, aten.nonzero, aten.masked_select,
              aten.unique_consecutive, aten._unique2, aten.repeat_interleave}


class GraphHazards(TorchDispatchMode):
    """Collects host reads of CUDA values and host-to-device copies."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        if packet in HOST_READS and any(t.device.type == "cuda" for t in tensors):
            self.found.append(f"host read of a CUDA value: {func}")
        if packet is aten._to_copy and args[0].device.type == "cpu" and kwargs.get("device") is not None \
                and torch.device(kwargs["device"]).type == "cuda":
            self.found.append(f"host-to-device copy: {func} of a {tuple(args[0].shape)} tensor")
        if packet is aten.copy_ and args[0].device.type == "cuda" and args[1].device.type == "cpu":
            self.found.append(f"host-to-device copy: {func} of a {tuple(args[1].shape)} tensor")
        return func(*args, **kwargs)


def _noisefast_objects(kind):
    """(module, name, object) for every object of type ``kind`` that a noisefast module holds."""
    found = []
    for info in pkgutil.walk_packages(noisefast.__path__, "noisefast."):
        if info.name.startswith(("noisefast.triton", "noisefast.plot")):
            continue
        module = importlib.import_module(info.name)
        found.extend((module, name, value) for name, value in vars(module).items() if isinstance(value, kind))
    return found


def _custom_op_bodies():
    """(module, name, body) for every torch.library custom op object that a noisefast module holds:
    patching the name with the body makes callers run the implementation itself on fake tensors
    (a custom op called under FakeTensorMode runs its fake kernel instead)."""
    from torch._library.custom_ops import CustomOpDef

    return [(module, name, op._init_fn) for module, name, op in _noisefast_objects(CustomOpDef)]


def _all_kernels():
    """Every distinct :class:`noisefast._library.Kernels` object (one per custom op)."""
    from noisefast._library import Kernels

    unique = {id(k): k for _, _, k in _noisefast_objects(Kernels)}
    return list(unique.values())


def _gpu_backend(kernels):
    """The backend a real GPU run of ``kernels`` takes when its Triton kernel is forced: Triton when
    the op has one, else its CUDA C++ kernel."""
    return "triton" if "triton" in kernels.gpu_preference else "cuda"


def _cuda_kernel_recorder(kernels, launches):
    """Stands for ``torch.ops.noisefast_C.<op>`` on CUDA: records the launch and returns what the
    op's fake kernel returns for these (fake) arguments."""
    def launch(*args):
        launches.append(kernels.name)
        return kernels.op._abstract_fn(*args)
    return launch


@contextlib.contextmanager
def as_if_captured():
    """Yields (launches, hazards): Triton launches made and hazards seen inside the block, which
    runs under fake CUDA tensors as if a CUDA graph were being captured."""
    triton_interpreter = pytest.importorskip("triton.runtime.interpreter")
    from torch._subclasses.fake_tensor import FakeTensorMode

    launches = []

    def record_launch(self, *args, grid, warmup, **kwargs):
        launches.append(self.fn.__name__)

    with contextlib.ExitStack() as stack:
        for module, name, body in _custom_op_bodies():
            stack.enter_context(mock.patch.object(module, name, body))
        # The public functions call Kernels.call, which under a dispatch mode calls the custom op:
        # run the implementation there too.
        stack.enter_context(mock.patch.object(noisefast._library.Kernels, "call", lambda self, *args: self._impl(*args)))
        for kernels in _all_kernels():
            # The backend of a real GPU run (Triton forced where the op has it), and the CUDA C++
            # kernel replaced by a recorder; implementation() is looked up at every call.
            stack.enter_context(mock.patch.object(kernels, "backend_for", lambda device, k=kernels: _gpu_backend(k)))
            cuda_kernel = _cuda_kernel_recorder(kernels, launches)
            real_implementation = kernels.implementation
            stack.enter_context(mock.patch.object(
                kernels, "implementation",
                lambda backend, real=real_implementation, cuda=cuda_kernel: cuda if backend == "cuda" else real(backend)))
            # kernel_for remembers implementation(backend_for(device)): start from an empty memo so
            # that it resolves through the two replacements above.
            stack.enter_context(mock.patch.object(kernels, "_kernels", {}))
            stack.enter_context(mock.patch.object(kernels, "_in_place", {}))  # run_in_place's memo, likewise
        # Kernels.run_in_place calls the backend itself when no dispatch mode is active, as during a
        # real capture: the fake-tensor and inspection modes below must not send it to the custom op.
        stack.enter_context(mock.patch.object(noisefast._library, "_len_dispatch_stack", return_value=0))
        stack.enter_context(mock.patch.object(triton_interpreter.InterpretedFunction, "run", record_launch))
        stack.enter_context(mock.patch("torch.cuda.is_current_stream_capturing", return_value=True))
        stack.enter_context(mock.patch("torch.cuda.current_device", return_value=0))  # fake tensors: cuda:0
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        hazards = stack.enter_context(GraphHazards())
        yield launches, hazards.found


def _cuda(*shape, dtype=torch.float32):
    return torch.empty(shape, dtype=dtype, device="cuda")


def _consistency_noise():
    noise = noisefast.ConsistencyNoise(total_steps=1000)
    return lambda: noise.sample(_cuda(8, 3, 4, 4), step=500)


def _ema_update():
    made = {}

    def update():  # the EMA and its model are made at the first (warm-up) call, inside the block
        if not made:
            net = torch.nn.Sequential(torch.nn.Linear(6, 5, device="cuda"), torch.nn.Linear(5, 2, device="cuda"))
            made["ema"] = noisefast.EMA(net, decay=0.99, warmup="ramp")
        made["ema"].update()
    return update


def _gradient_noise_step():
    made = {}

    def step():
        if not made:
            params = [torch.nn.Parameter(_cuda(6, 5)), torch.nn.Parameter(_cuda(5))]
            for p in params:
                p.grad = torch.zeros_like(p)
            made["noise"] = noisefast.GradientNoise(params, eta=0.01)
        made["noise"].step()
    return step


# Each case builds its CUDA (fake) inputs inside the block. CPU 0-d tensors stand for scalars a
# training loop keeps on the host; torch reads those on the host, which is allowed.
CPU_CASES = {
    "randn": lambda: noisefast.randn(4, 5, seed=3, device="cuda"),
    "gaussian_noise": lambda: noisefast.gaussian_noise(_cuda(8, 3, 4, 4), 0.1),
    "gaussian_noise_cpu_scalar": lambda: noisefast.gaussian_noise(_cuda(8, 3, 4, 4), torch.tensor(0.1)),
    "gaussian_noise_per_channel": lambda: noisefast.gaussian_noise(_cuda(8, 3, 4, 4), _cuda(3, 1, 1)),
    "GaussianNoise": lambda: noisefast.GaussianNoise(0.2)(_cuda(8, 16)),
    "consistency_pair": lambda: noisefast.consistency_pair(_cuda(8, 3, 4, 4), 0.5, 0.7),
    "consistency_pair_tensors": lambda: noisefast.consistency_pair(_cuda(8, 3, 4, 4), torch.tensor(0.5), _cuda(8)),
    "add_noise": lambda: noisefast.add_noise(_cuda(8, 3, 4, 4), _cuda(8), alpha=torch.tensor(0.9),
                                             input_perturbation=0.1, offset_noise=0.1),
    "add_noise_float64": lambda: noisefast.add_noise(_cuda(8, 3, 4, 4, dtype=torch.float64), 0.3,
                                                     input_perturbation=0.1, offset_noise=0.1),
    "consistency_noise": _consistency_noise(),
    "consistency_output": lambda: noisefast.consistency_output(_cuda(8, 3, 4, 4), _cuda(8, 3, 4, 4), _cuda(8)),
    "consistency_output_cpu_scalar": lambda: noisefast.consistency_output(
        _cuda(8, 3, 4, 4), _cuda(8, 3, 4, 4), torch.tensor(0.3), sigma_data=0.3),
    "consistency_output_float64": lambda: noisefast.consistency_output(
        _cuda(8, 5, dtype=torch.float64), _cuda(8, 5, dtype=torch.float64), 0.3),
    "pseudo_huber_loss": lambda: noisefast.pseudo_huber_loss(_cuda(8, 3, 4, 4), _cuda(8, 3, 4, 4)),
    "mix_rows": lambda: noisefast.ops.mix_rows.mix_rows(_cuda(8, 5), torch.arange(8, device="cuda"), 0.3),
    "mix_rows_cpu_lam": lambda: noisefast.ops.mix_rows.mix_rows(_cuda(8, 5), torch.arange(8, device="cuda"),
                                                                torch.tensor(0.3)),
    "mixup": lambda: noisefast.mixup(_cuda(8, 5), torch.zeros(8, dtype=torch.int64, device="cuda"), 0.2),
    "foreach_gaussian_noise_": lambda: noisefast.foreach_gaussian_noise_([_cuda(30, 7), _cuda(5)], 0.1),
    "foreach_gaussian_noise_cuda_std": lambda: noisefast.foreach_gaussian_noise_(
        [_cuda(30, 7), _cuda(5, dtype=torch.bfloat16)], _cuda()),
    "foreach_gaussian_noise": lambda: noisefast.foreach_gaussian_noise([_cuda(30, 7), _cuda(5)], 0.1),
    "ema_update_": lambda: noisefast.ema_update_([_cuda(30, 7), _cuda(5)], [_cuda(30, 7), _cuda(5)], _cuda()),
    "ema_update_multi_": lambda: noisefast.ema_update_multi_(
        [[_cuda(30, 7)], [_cuda(30, 7)]], [_cuda(30, 7)], _cuda(2)),
    "EMA.update": _ema_update(),
    "GradientNoise.step": _gradient_noise_step(),
}


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_launch_path_is_capturable(case):
    """No host read of a device value and no host-to-device copy between the public call and its
    kernel launches (after a warm-up call, as before a real capture: caches are filled then)."""
    with as_if_captured() as (launches, hazards):
        CPU_CASES[case]()  # warm-up
        del launches[:], hazards[:]
        CPU_CASES[case]()
    assert not hazards, f"{case}: " + "; ".join(hazards)
    assert launches, f"{case}: no Triton kernel was launched (the check did not reach a kernel)"


# --- on a GPU -----------------------------------------------------------------------------------------

def _x(*shape, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype).cuda()


def _capture(step):
    """(graph, outputs) of step captured in a CUDA graph after two warm-up calls on a side stream
    (Triton compiles, caches fill), with any host synchronisation during capture an error."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.cuda.graph(graph):
            out = step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    return graph, out


def _tensors(out):
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for t in tree_leaves(tuple(out)) if isinstance(t, torch.Tensor)]


def _foreach_noise_step():
    sources = [_x(300, 7), _x(5), _x(1000, dtype=torch.bfloat16)]
    params = [s.clone() for s in sources]

    def step():  # in place: each step starts again from the same values (device-to-device copies)
        for p, s in zip(params, sources):
            p.copy_(s)
        noisefast.foreach_gaussian_noise_(params, 0.1)
        return params
    return step


def _random_cases():
    sigma = torch.rand(8, generator=torch.Generator().manual_seed(1)).cuda() + 0.1
    noise = noisefast.ConsistencyNoise(total_steps=1000)
    x, y = _x(8, 3, 16, 16), torch.arange(8, device="cuda") % 3
    return {
        "gaussian_noise": lambda: noisefast.gaussian_noise(x, 0.3),
        "gaussian_noise_per_sample": lambda: noisefast.gaussian_noise(x, sigma.view(8, 1, 1, 1)),
        "consistency_pair": lambda: noisefast.consistency_pair(x, sigma, sigma * 1.5),
        "add_noise": lambda: noisefast.add_noise(x, sigma, input_perturbation=0.1, offset_noise=0.1),
        "add_noise_float64": lambda: noisefast.add_noise(x.double(), 0.3, input_perturbation=0.1),
        "consistency_noise": lambda: noise.sample(x, step=500),
        "foreach_gaussian_noise_": _foreach_noise_step(),
        "mixup": lambda: noisefast.mixup(x, y, 0.4),
    }


RANDOM_CASES = ["gaussian_noise", "gaussian_noise_per_sample", "consistency_pair", "add_noise", "add_noise_float64",
                "consistency_noise", "foreach_gaussian_noise_", "mixup"]


@pytest.mark.cuda
@pytest.mark.parametrize("case", RANDOM_CASES)
def test_cuda_graph_replays_draw_fresh_noise_from_the_stream(case):
    step = _random_cases()[case]
    graph, out = _capture(step)
    torch.cuda.manual_seed(1234)
    graph.replay()
    first = [t.clone() for t in _tensors(out)]
    graph.replay()
    second = [t.clone() for t in _tensors(out)]
    assert any(not torch.equal(a, b) for a, b in zip(first, second)), f"{case}: two replays gave the same noise"
    torch.cuda.manual_seed(1234)
    eager = [t.clone() for t in _tensors(step())]
    for a, b in zip(first, eager):
        assert torch.equal(a, b), f"{case}: a replay differs from the eager call under the same seed"


@pytest.mark.cuda
def test_cuda_graph_training_step_ops_capture_without_sync():
    """The deterministic ops of a consistency-training step (output, loss forward and backward,
    EMA with a device decay) capture with host syncs refused and replay to the eager values."""
    raw, x = _x(8, 3, 16, 16).requires_grad_(), _x(8, 3, 16, 16)
    sigma = (torch.rand(8, generator=torch.Generator().manual_seed(2)) + 0.1).cuda()
    shadows, weights = [_x(1000), _x(70, 3)], [_x(1000), _x(70, 3)]
    decay = torch.tensor(0.99, device="cuda")

    def step():
        raw.grad = None
        out = noisefast.consistency_output(raw, x, sigma, sigma_data=0.3)
        loss = noisefast.pseudo_huber_loss(out, x)
        loss.backward()
        noisefast.ema_update_(shadows, weights, decay)
        return [loss.detach(), raw.grad]

    graph, out = _capture(step)
    before = [s.clone() for s in shadows]
    graph.replay()
    replayed = [t.clone() for t in out]
    after = [s.clone() for s in shadows]
    for s, b in zip(shadows, before):
        s.copy_(b)
    eager = step()
    for a, b in zip(replayed + after, eager + shadows):
        assert torch.equal(a, b)


@pytest.mark.cuda
def test_cuda_cpu_scalar_arguments_keep_their_gradients():
    """A 0-d CPU tensor argument reaches the GPU without a host-to-device copy (noisefast/_scalars.py)
    and still receives its gradient, on the CPU, equal to that of the same value on the GPU."""
    x = _x(4, 3, 8, 8)
    grads = []
    for device in ("cpu", "cuda"):
        sigma = torch.tensor(0.5, device=device, requires_grad=True)
        raw_sigma = torch.tensor(0.7, device=device, requires_grad=True)
        gen = torch.Generator("cuda").manual_seed(3)
        cur, _ = noisefast.consistency_pair(x, sigma, 0.9, generator=gen)
        out = noisefast.consistency_output(x, cur, raw_sigma, sigma_data=0.3)
        out.square().sum().backward()
        grads.append((sigma.grad, raw_sigma.grad))
    for on_cpu, on_gpu in zip(*grads):
        assert on_cpu.device.type == "cpu"
        torch.testing.assert_close(on_cpu, on_gpu.cpu(), rtol=1e-5, atol=1e-6)
