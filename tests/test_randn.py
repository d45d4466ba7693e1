"""The portable noise stream: exact values, agreement across backends, statistics, seeding."""
import math

import numpy as np
import pytest
import torch

import noisefast
from noisefast.ops.randn import philox_words_out
from noisefast.random import draw_seed
from noisefast.reference import philox as ref
from noisefast.reference.randn import philox_words_out as reference_philox_words_out

from helpers import assert_close, backend_params, run_on

MASK = 0xFFFFFFFF


def _kstest_normal(z) -> float:
    """p-value of a KS test against N(0, 1). scipy is imported here, not at the top: the GPU
    machine has none, and a failed import at collection would stop the whole test run there."""
    stats = pytest.importorskip("scipy.stats")
    return stats.kstest(z, "norm").pvalue


def philox_python(counter, key):
    """Philox4x32-10 on Python ints: an independent re-derivation (Salmon et al. 2011)."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        p_a = 0xD2511F53 * c0
        p_b = 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p_b >> 32) ^ c1 ^ k0) & MASK, p_b & MASK, ((p_a >> 32) ^ c3 ^ k1) & MASK, p_a & MASK
        k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
    return [c0, c1, c2, c3]


def normals_python(seed, stream, j):
    """Element j of the normal stream with numpy float32 math (docs/design.md's definition)."""
    q, lane = divmod(j, 4)
    w = philox_python([q & MASK, q >> 32, stream & MASK, stream >> 32], [seed & MASK, seed >> 32])
    u = [np.float32(((x >> 9) * 2 + 1) * 2.0 ** -24) for x in w]
    two_pi = np.float32(2 * math.pi)
    r = np.sqrt(np.float32(-2.0) * np.log(u[lane & 2]))
    theta = two_pi * u[(lane & 2) + 1]
    return float(r * (np.cos(theta) if lane % 2 == 0 else np.sin(theta)))


# Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK, MASK, MASK, MASK), (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_reference_philox_matches_random123(counter, key, expected):
    words = ref.philox4x32_10(*[torch.tensor([c]) for c in counter], *key)
    assert [int(w) for w in words] == list(expected)
    assert philox_python(list(counter), list(key)) == list(expected)


def test_reference_philox_matches_python_ints_on_wide_counters():
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 2 ** 62, (64,), generator=gen)
    seed, stream = 2 ** 63 - 1, 2 ** 40 + 3
    words = torch.stack(ref.philox_words(seed, stream, blocks), dim=-1)
    for q, row in zip(blocks.tolist(), words.tolist()):
        assert row == philox_python([q & MASK, q >> 32, stream & MASK, stream >> 32], [seed & MASK, seed >> 32])


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("stream,first_block", [(0, 0), (3, 2 ** 33 + 5), (2 ** 35 + 1, 7)])
def test_philox_words_bit_exact(backend, stream, first_block):
    seed = torch.tensor([2 ** 63 - 1])
    out = torch.empty(1031, 4, dtype=torch.int64)
    run_on(backend, philox_words_out, out, seed, stream, first_block)
    expected = torch.empty_like(out)
    reference_philox_words_out(expected, seed, stream, first_block)
    assert torch.equal(out, expected)


# Pinned values: seed, offset -> the first six elements of stream 0 (offsets not multiples of 4).
PINNED = {
    (0, 0): [0.991138, -0.924662, -0.617609, -0.482068, -0.153638, 0.180826],
    (0, 5): [0.180826, 0.831735, 0.19744, -1.186358, 2.544097, -0.26965],
    (1, 0): [0.380401, -0.296278, -0.249233, -1.003837, 0.626948, -0.633984],
    (1, 5): [-0.633984, -0.678271, -1.013081, -1.567155, -0.580956, 0.724508],
    (2 ** 63 - 1, 0): [-1.586754, -0.844216, 0.223789, 0.077338, 0.336188, -2.601992],
    (2 ** 63 - 1, 5): [-2.601992, -0.661618, -0.213605, -0.708832, -0.758922, 0.34607],
}


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("seed,offset", list(PINNED))
def test_pinned_values(backend, seed, offset):
    z = run_on(backend, noisefast.randn, 6, seed=seed, offset=offset)
    assert_close(z, torch.tensor(PINNED[(seed, offset)]), rtol=0, atol=1e-6, what=f"seed {seed} offset {offset}")
    independent = torch.tensor([normals_python(seed, 0, offset + k) for k in range(6)])
    assert_close(z, independent, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("numel,offset,stream", [(1, 0, 0), (7, 3, 1), (1029, 6, 2), (4096, 1, 2 ** 40)])
def test_backends_agree_with_reference(backend, numel, offset, stream):
    seed = 123456789012345
    z = run_on(backend, noisefast.randn, numel, seed=seed, stream=stream, offset=offset)
    expected = ref.normal_stream(numel, seed, stream, offset)
    assert_close(z, expected, rtol=1e-6, atol=1e-6, what=backend)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_dtypes_are_the_float32_numbers_rounded(backend, dtype):
    z = run_on(backend, noisefast.randn, 3, 333, seed=5, dtype=dtype)
    assert z.dtype == dtype and z.shape == (3, 333)
    expected = ref.normal_stream(999, 5).view(3, 333)
    if dtype == torch.float64:
        assert_close(z, expected.double(), rtol=1e-6, atol=1e-6)
    else:
        # equal to the float32 numbers rounded, except where z itself differs in its last float32
        # bits and that flips a rounding: then by one ulp of dtype at most
        rounded = expected.to(dtype)
        ulp = (2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10) * expected.abs().clamp_min(2 ** -14)
        assert ((z.double() - rounded.double()).abs() <= ulp.double()).all()
        assert (z == rounded).float().mean() > 0.99


def test_offsets_continue_the_same_stream():
    whole = noisefast.randn(40, seed=9)
    for start in (1, 2, 3, 4, 5, 17):
        assert torch.equal(noisefast.randn(40 - start, seed=9, offset=start), whole[start:])


def test_streams_and_seeds_are_different():
    a = noisefast.randn(1000, seed=1, stream=0)
    assert not torch.equal(a, noisefast.randn(1000, seed=1, stream=1))
    assert not torch.equal(a, noisefast.randn(1000, seed=2, stream=0))
    assert torch.equal(a, noisefast.randn(1000, seed=1, stream=0))


def test_shapes_and_empty():
    assert noisefast.randn(2, 3, seed=0).shape == (2, 3)
    assert noisefast.randn((2, 3), seed=0).shape == (2, 3)
    assert noisefast.randn(torch.Size([4]), seed=0).shape == (4,)
    assert noisefast.randn(0, 5, seed=0).numel() == 0
    assert noisefast.randn(seed=0).shape == ()


@pytest.mark.parametrize("kwargs,match", [
    (dict(seed=-1), "seed"), (dict(seed=2 ** 64), "seed"), (dict(seed=0, offset=-1), "offset"),
    (dict(seed=0, stream=-2), "stream"), (dict(seed=1.5), "seed"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        noisefast.randn(3, **kwargs)
    with pytest.raises(TypeError, match="dtype"):
        noisefast.randn(3, seed=0, dtype=torch.int32)
    with pytest.raises(ValueError, match="size"):
        noisefast.randn(-1, seed=0)


def test_seeds_above_2_63_wrap_to_the_same_bits():
    # A seed >= 2^63 travels as the int64 with the same bits; its numbers use the full 64-bit key.
    z = noisefast.randn(8, seed=2 ** 64 - 1)
    assert_close(z, torch.tensor([normals_python(2 ** 64 - 1, 0, k) for k in range(8)]), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("seed, stream", [(2 ** 63, 0), (2 ** 64 - 1, 3), (5, 2 ** 63), (7, 2 ** 64 - 1)],
                         ids=["seed-2^63", "seed-max", "stream-2^63", "stream-max"])
def test_one_64_bit_range_on_every_backend(backend, seed, stream):
    """issue #13 item 10: the reference rejected seeds >= 2^63, the CPU streams >= 2^63 ("must be
    >= 0, got -9223..."), though both are documented as [0, 2^64)."""
    z = run_on(backend, noisefast.randn, 6, seed=seed, stream=stream)
    assert_close(z, torch.tensor([normals_python(seed, stream, k) for k in range(6)]), rtol=1e-6, atol=1e-6)
    for bad in (dict(seed=2 ** 64, stream=stream), dict(seed=seed, stream=2 ** 64), dict(seed=seed, stream=-1)):
        with pytest.raises(ValueError, match="seed" if bad["seed"] == 2 ** 64 else "stream"):
            run_on(backend, noisefast.randn, 6, **bad)


@pytest.fixture(scope="module")
def million():
    return noisefast.randn(1_000_000, seed=2024).double()


def test_moments(million):
    n = million.numel()
    z = million
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((z ** 3).mean().item()) < 5 * math.sqrt(15 / n)
    assert abs((z ** 4).mean().item() - 3) < 5 * math.sqrt(96 / n)


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 5, 8])
def test_lag_correlations(million, lag):
    z = million
    r = torch.corrcoef(torch.stack([z[:-lag], z[lag:]]))[0, 1].item()
    assert abs(r) < 5 / math.sqrt(z.numel())


def test_lanes_are_identically_distributed(million):
    # Each Box-Muller lane (cos/sin of two radii) must be N(0, 1) on its own.
    for lane in range(4):
        z = million[lane::4].numpy()
        assert _kstest_normal(z) > 1e-3


def test_kolmogorov_smirnov(million):
    assert _kstest_normal(million.numpy()) > 1e-3


def test_independent_streams_are_uncorrelated():
    a = noisefast.randn(200_000, seed=7, stream=0).double()
    b = noisefast.randn(200_000, seed=7, stream=1).double()
    assert abs(torch.corrcoef(torch.stack([a, b]))[0, 1].item()) < 5 / math.sqrt(a.numel())


def test_statistics_can_fail():
    # The thresholds above reject a stream that is off by a little: uniforms on (0, 1) pass for
    # neither the variance nor the KS test.
    z = torch.rand(1_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert _kstest_normal(z.numpy()) < 1e-3
    shifted = noisefast.randn(1_000_000, seed=2024).double() + 0.01
    assert abs(shifted.mean().item()) > 5 / math.sqrt(1e6)


def test_draw_seed_reproducible_and_fresh():
    torch.manual_seed(0)
    a, b = draw_seed("cpu"), draw_seed("cpu")
    torch.manual_seed(0)
    assert torch.equal(a, draw_seed("cpu")) and not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(draw_seed("cpu", g1), draw_seed("cpu", g2))
    assert a.dtype == torch.int64 and a.shape == (1,) and 0 <= a.item() < 2 ** 63
    with pytest.raises(TypeError, match="generator"):
        draw_seed("cpu", generator=3)


def test_draw_seed_in_cpp_draws_what_the_python_draw_draws():
    # The C++ draw of the eager CPU path (noisefast._C.draw_cpu_seed) must give exactly the seeds of
    # torch.empty(1, dtype=torch.int64).random_(0, 2**63 - 1): a run seeded with torch.manual_seed
    # gets the same noise whichever path drew its seeds.
    from noisefast._library import extension
    bound = 2 ** 63 - 1
    torch.manual_seed(7)
    fast = [draw_seed("cpu").item() for _ in range(200)]
    torch.manual_seed(7)
    slow = [torch.empty(1, dtype=torch.int64).random_(0, bound).item() for _ in range(200)]
    assert fast == slow and len(set(fast)) == 200
    g = torch.Generator().manual_seed(8)
    fast = [draw_seed(torch.device("cpu"), g).item() for _ in range(200)]
    g = torch.Generator().manual_seed(8)
    slow = [torch.empty(1, dtype=torch.int64).random_(0, bound, generator=g).item() for _ in range(200)]
    assert fast == slow
    if extension() is not None:
        torch.manual_seed(9)
        drawn = extension().draw_cpu_seed(None)
        torch.manual_seed(9)
        assert torch.equal(drawn, torch.empty(1, dtype=torch.int64).random_(0, bound))
        with pytest.raises(TypeError, match="generator"):
            extension().draw_cpu_seed(3)


def test_draw_seed_under_fake_tensors_is_a_fake_tensor():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    with FakeTensorMode():
        seed = draw_seed("cpu")
    assert isinstance(seed, FakeTensor)


def test_opcheck():
    out = torch.empty(11)
    torch.library.opcheck(torch.ops.noisefast.randn_out.default, (out, torch.tensor([4]), 2, 3))


def test_compile_fullgraph():
    def f(x):
        return x + noisefast.randn(x.shape[0], seed=11, offset=2)

    x = torch.zeros(33)
    assert torch.equal(torch.compile(f, fullgraph=True)(x), f(x))


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("numel,offset,stream", [(1, 0, 0), (1029, 6, 2), (1 << 20, 3, 2 ** 40)])
def test_cuda_matches_reference(backend, numel, offset, stream):
    z = run_on(backend, noisefast.randn, numel, seed=2 ** 63 - 1, stream=stream, offset=offset, device="cuda")
    expected = ref.normal_stream(numel, 2 ** 63 - 1, stream, offset)
    assert_close(z.cpu(), expected, rtol=1e-5, atol=2e-6, what=backend)


@pytest.mark.cuda
def test_cuda_words_bit_exact():
    seed = torch.tensor([2 ** 63 - 1], device="cuda")
    out = torch.empty(4097, 4, dtype=torch.int64, device="cuda")
    run_on("triton", philox_words_out, out, seed, 5, 2 ** 33)
    expected = torch.empty(4097, 4, dtype=torch.int64)
    reference_philox_words_out(expected, seed.cpu(), 5, 2 ** 33)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_cuda_dtypes_and_misaligned_outputs(backend, dtype):
    # a view starting one element in: the vectorised path must step aside
    base = torch.empty(1 + 4099, dtype=dtype, device="cuda")
    out = base[1:]
    seed = torch.tensor([77], device="cuda")
    run_on(backend, torch.ops.noisefast.randn_out, out, seed, 0, 2)
    expected = ref.normal_stream(4099, 77, 0, 2).to(dtype)
    assert_close(out.cpu().float(), expected.float(), rtol=1e-2, atol=1e-2, what=f"{backend} {dtype}")
