"""Stream positions of a DTensor shard (noisefast/_dtensor.py, csrc/include/noisefast/stream_map.h):
the box -> (offset, segment, stride) mapping against brute force, and gaussian_noise's mapped kernels
on every backend against the reference and against the unsharded tensor's noise, in one process.
The multi-process DTensor tests are tests/test_dtensor.py."""
import itertools

import pytest
import torch

import noisefast
from noisefast import _dtensor
from noisefast.ops.gaussian_noise import KERNELS, gaussian_noise_op
from noisefast.reference.philox import normal_at, normal_stream, stream_positions

from helpers import backend_params, run_on

SEED = 987654321


def global_indices(shape, box_offset, box_shape):
    """The row-major global indices of a box's elements, by brute force."""
    index = torch.arange(torch.Size(shape).numel()).view(shape)
    return index[tuple(slice(o, o + s) for o, s in zip(box_offset, box_shape))].reshape(-1)


def chunk_boxes(size, parts):
    """torch.chunk's split of ``size`` into ``parts`` (what Shard uses): (offset, length) pairs."""
    step = -(-size // parts)
    return [(min(k * step, size), max(0, min(step, size - k * step))) for k in range(parts)]


# Boxes of one sharded dimension (Shard(d), uneven, empty shards included), of dimension 0 and one
# other (a 2-D mesh's Shard(0), Shard(d)), and whole tensors (Replicate).
SHAPES = [(5, 7), (3, 6, 5), (2, 1, 9, 3), (11,)]


def one_dim_boxes():
    for shape in SHAPES:
        for d in range(len(shape)):
            for parts in (2, 3, 4):
                for o, s in chunk_boxes(shape[d], parts):
                    yield shape, tuple(o if k == d else 0 for k in range(len(shape))), \
                        tuple(s if k == d else shape[k] for k in range(len(shape)))


def two_dim_boxes():
    for shape in SHAPES:
        for d in range(1, len(shape)):
            for (o0, s0), (od, sd) in itertools.product(chunk_boxes(shape[0], 2), chunk_boxes(shape[d], 3)):
                offset = [0] * len(shape)
                size = list(shape)
                offset[0], size[0], offset[d], size[d] = o0, s0, od, sd
                yield shape, tuple(offset), tuple(size)


@pytest.mark.parametrize("shape, box_offset, box_shape", list(one_dim_boxes()) + list(two_dim_boxes()))
def test_the_map_of_a_box_names_its_global_indices(shape, box_offset, box_shape):
    m = _dtensor.stream_map_of_box(shape, box_offset, box_shape)
    expected = global_indices(shape, box_offset, box_shape)
    assert torch.equal(stream_positions(expected.numel(), *m), expected)
    if box_shape[1:] == tuple(shape[1:]):  # Shard(0) and Replicate: one run, the kernels' fast path
        assert m.contiguous


def test_a_box_that_is_not_evenly_spaced_runs_raises():
    # Shard(1) and Shard(2) of a [3, 6, 5] tensor: runs of 5 restart at every index of dimension 0
    with pytest.raises(NotImplementedError, match="evenly spaced runs"):
        _dtensor.stream_map_of_box((3, 6, 5), (0, 3, 2), (3, 3, 3))


def test_contiguous_strides_are_torch_s():
    for shape in [(5, 7), (3, 0, 5), (), (4,), (2, 1, 9, 3)]:
        assert _dtensor.contiguous_strides(shape) == torch.empty(shape).stride()


def test_normal_at_is_the_stream():
    positions = torch.tensor([0, 1, 2, 3, 7, 5, 2 ** 40 + 3, 2 ** 40 + 1, 13])
    stream = normal_stream(16, SEED)
    got = normal_at(positions, SEED)
    assert torch.equal(got[[0, 1, 2, 3, 4, 5, 8]], stream[[0, 1, 2, 3, 7, 5, 13]])
    assert torch.equal(got[6:8], normal_stream(4, SEED, 0, 2 ** 40)[[3, 1]])


# (numel, offset, segment, stride): segments not multiples of 4, odd sizes, a partial last run,
# 64-bit positions, and the contiguous case with an offset that is not a multiple of 4.
MAPS = [(105, 0, 7, 15), (105, 3, 7, 15), (1000, 5, 13, 40), (63, 2 ** 40 + 1, 5, 9), (1030, 6, 1030, 1030),
        (77, 2 ** 33 + 2, 1, 1), (12, 0, 12, 1_000_000), (9, 4, 1, 3)]


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("numel, offset, segment, stride", MAPS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_mapped_gaussian_noise_matches_the_reference(backend, numel, offset, segment, stride, dtype):
    x = torch.randn(numel, dtype=torch.float64).to(dtype)
    seed = torch.tensor([SEED])
    scale = torch.rand(3, dtype=torch.float64) + 0.5
    got = run_on(backend, gaussian_noise_op, x, seed, 0.7, scale, 2, offset, segment, stride)
    expected = noisefast.reference.gaussian_noise.gaussian_noise(x, seed, 0.7, scale, 2, offset, segment, stride)
    # normals agree within 1e-6 between backends (docs/design.md, section 4); sigma <= 1.05
    torch.testing.assert_close(got.double(), expected.double(), rtol=0, atol=2e-2 if dtype == torch.bfloat16 else 5e-6)
    z = normal_at(stream_positions(numel, offset, segment, stride), SEED)
    zero = run_on(backend, gaussian_noise_op, torch.zeros(numel), seed, 1.0, None, 1, offset, segment, stride)
    torch.testing.assert_close(zero, z, rtol=0, atol=2e-6)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("shape, box_offset, box_shape",
                         [((5, 7), (0, 3), (5, 2)), ((3, 6, 5), (1, 2, 0), (2, 3, 5)), ((2, 1, 9, 3), (0, 0, 4, 0), (2, 1, 5, 3)),
                          ((40, 33), (13, 0), (14, 33)), ((9, 301), (0, 151), (9, 150))])
def test_a_shard_gets_the_unsharded_tensor_s_noise(backend, shape, box_offset, box_shape):
    x = torch.randn(shape)
    seed = torch.tensor([SEED])
    box = tuple(slice(o, o + s) for o, s in zip(box_offset, box_shape))
    whole = run_on(backend, gaussian_noise_op, x, seed, 0.5, None, 1, 0, 1, 1)
    m = _dtensor.stream_map_of_box(shape, box_offset, box_shape)
    shard = run_on(backend, gaussian_noise_op, x[box].contiguous(), seed, 0.5, None, 1, *m)
    if backend == "triton":  # the mapped Triton path draws one normal at a time: the same operations
        torch.testing.assert_close(shard, whole[box], rtol=0, atol=1e-6)
    else:  # reference and C++ draw the shard's runs with the contiguous code: bit for bit
        assert torch.equal(shard, whole[box])


@pytest.mark.parametrize("backend", backend_params())
def test_the_gradient_to_std_regenerates_the_mapped_noise(backend):
    # backward draws z at the same positions as forward (noise_at): analytic == numeric
    x = torch.randn(30, dtype=torch.float64, requires_grad=True)
    scale = (torch.rand(3, dtype=torch.float64) + 0.5).requires_grad_()
    seed = torch.tensor([SEED])
    for m in [(5, 7, 11), (2 ** 35 + 3, 1, 1)]:
        assert run_on(backend, torch.autograd.gradcheck, lambda x, s: gaussian_noise_op(x, seed, 0.8, s, 2, *m),
                      (x, scale), atol=1e-5)
    torch.library.opcheck(gaussian_noise_op, (x, seed, 1.0, scale, 2, 5, 7, 11))


@pytest.mark.parametrize("offset, segment, stride, match", [(-1, 1, 1, "offset"), (0, 0, 1, "segment"),
                                                             (0, 5, 4, "stride")])
def test_bad_maps_raise_in_the_compiled_kernel(offset, segment, stride, match):
    with pytest.raises(RuntimeError, match=match):
        KERNELS.implementation("cpu")(torch.zeros(8), torch.tensor([1]), 1.0, None, 1, offset, segment, stride)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("numel, offset, segment, stride", MAPS)
def test_cuda_mapped_gaussian_noise_matches_the_reference(backend, numel, offset, segment, stride):
    x = torch.randn(numel)
    seed = torch.tensor([SEED])
    with noisefast.use_backend(backend):
        got = gaussian_noise_op(x.cuda(), seed.cuda(), 0.7, None, 1, offset, segment, stride)
    expected = noisefast.reference.gaussian_noise.gaussian_noise(x, seed, 0.7, None, 1, offset, segment, stride)
    torch.testing.assert_close(got.cpu(), expected, rtol=0, atol=1e-5)
