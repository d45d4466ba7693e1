"""Tests of the fused EMA update, ``ema_update_`` and ``ema_update_multi_`` (noisefast.ops.ema_update).
The EMA class built on it is tested in test_ema.py.

The specification is torch.lerp: ``ema.lerp_(x, 1 - decay)`` with the weight rounded once to the
math type (noisefast/reference/ema_update.py). The C++ kernel equals it bit for bit in every dtype
pairing; the CUDA kernel is compared with the reference on the GPU (cuda-marked tests).
"""
from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import noisefast
from noisefast.ema import EMA
from noisefast.ops.ema_update import ema_update_, ema_update_multi_, ema_update_multi_op_, ema_update_op_
from noisefast.reference import ema_update as ref
from tests.helpers import assert_close, assert_low_precision_rule, run_on

BACKENDS = [pytest.param("reference", id="reference"), pytest.param("cpu", id="cpu")]
PAIRINGS = [  # (shadow dtype, weight dtype)
    (torch.float32, torch.float32), (torch.float32, torch.float16), (torch.float32, torch.bfloat16),
    (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16), (torch.float64, torch.float64),
]
PAIRING_IDS = [f"{str(e)[6:]}-of-{str(x)[6:]}" for e, x in PAIRINGS]
DECAYS = [0.9999, 0.999, 0.9, 0.5, 0.3, 0.0, 1.0]

# The kernels' chunking (csrc/cpu/ema_update_cpu.h: kEmaBlock = 1024 elements per profile sweep, F16C and
# AVX2 conversions 8 at a time, kEmaGrain = 32768 elements per parallel task;
# csrc/cuda/multi_tensor_apply.cuh: kMtaChunk = 65536 elements per chunk, packs of 4): sizes on both
# sides of each boundary.
BOUNDARY_SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 1023, 1024, 1025, 4097, 32767, 32768, 32769, 65535, 65536, 65537,
                  131073]


def lerp_expected(shadows, tensors, decay):
    """torch.lerp on clones: the specification, written out."""
    out = []
    for e, x in zip(shadows, tensors):
        e = e.clone()
        e.lerp_(x.to(e.dtype), ref.lerp_weight(decay, e.dtype))
        out.append(e)
    return out


def random_lists(sizes, shadow_dtype, weight_dtype, *, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, generator=g).to(device=device, dtype=weight_dtype) for n in sizes]
    es = [(x.double() + 0.1 * torch.randn(x.shape, generator=g, dtype=torch.float64).to(device)).to(shadow_dtype)
          for x in xs]
    return es, xs


def assert_equal_lists(actual, expected, what=""):
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.dtype == e.dtype and a.shape == e.shape, f"{what}[{i}]"
        if not torch.equal(a, e):
            assert_close(a, e, rtol=0, atol=0, what=f"{what}[{i}]")


# --------------------------------------------------------------------------------------------
# The op: equality with torch.lerp


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay", DECAYS)
def test_float32_equals_lerp_bit_for_bit(backend, decay):
    es, xs = random_lists([1, 17, 4097, 70001], torch.float32, torch.float32, seed=1)
    expected = lerp_expected(es, xs, decay)
    run_on(backend, ema_update_, es, xs, decay)
    assert_equal_lists(es, expected, "ema_tensors")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pairing", PAIRINGS, ids=PAIRING_IDS)
def test_every_pairing_equals_lerp(backend, pairing):
    es, xs = random_lists([3, 4096, 33001], *pairing, seed=2)
    for decay in (0.9999, 0.75, 0.2):
        expected = lerp_expected(es, xs, decay)
        run_on(backend, ema_update_, es, xs, decay)
        assert_equal_lists(es, expected, f"decay={decay}")


def test_ends_are_exact():
    """decay = 1 leaves the shadow; decay = 0 copies the weight (the lerp form's point)."""
    es, xs = random_lists([1000], torch.float32, torch.bfloat16, seed=3)
    before = es[0].clone()
    ema_update_(es, xs, 1.0)
    assert torch.equal(es[0], before)
    ema_update_(es, xs, 0.0)
    assert torch.equal(es[0], xs[0].float())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("pairing", PAIRINGS, ids=PAIRING_IDS)
def test_nan_and_inf_propagate(backend, pairing):
    """A NaN or inf weight makes its shadow NaN/inf (it is never hidden), in the vector body and
    the tail alike."""
    es, xs = random_lists([1030], *pairing, seed=21)
    for k in (3, 1027):
        xs[0][k] = float("nan")
    xs[0][500] = float("inf")
    expected = lerp_expected(es, xs, 0.9)
    run_on(backend, ema_update_, es, xs, 0.9)
    assert torch.isnan(es[0][[3, 1027]]).all() and torch.isinf(es[0][500])
    assert_close(es[0], expected[0], rtol=0, atol=0, what="non-finite")


def test_lerp_form_is_closer_than_mul_add():
    """Against an fp64 computation, the lerp form is no worse than the mul_/add_ loop, in fp32."""
    es, xs = random_lists([200000], torch.float32, torch.float32, seed=4)
    exact = es[0].double() * 0.999 + xs[0].double() * (1 - 0.999)
    loop = [es[0].clone()]
    ref.ema_update_loop(loop, xs, 0.999)
    ema_update_(es, xs, 0.999)
    err_nf = (es[0].double() - exact).abs().max().item()
    err_loop = (loop[0].double() - exact).abs().max().item()
    ulp = torch.finfo(torch.float32).eps * exact.abs().max().item()
    assert err_nf <= err_loop and err_nf <= ulp, (err_nf, err_loop, ulp)


@pytest.mark.parametrize("shadow_dtype", [torch.bfloat16, torch.float16])
def test_low_precision_shadow_accuracy(shadow_dtype):
    """A bf16/fp16 shadow: error against fp64 no worse than twice that of the same update written
    in eager PyTorch at that precision (decay * e + (1 - decay) * x)."""
    es, xs = random_lists([100003], shadow_dtype, shadow_dtype, seed=5)
    decay = 0.9
    exact = es[0].double() * decay + xs[0].double() * (1 - decay)
    eager = es[0] * decay + xs[0] * (1 - decay)
    ema_update_(es, xs, decay)
    assert_low_precision_rule(es[0], eager, exact, what=str(shadow_dtype))


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float16])
def test_float32_shadow_of_low_precision_weight_accuracy(weight_dtype):
    """An fp32 shadow of bf16/fp16 weights is accurate to fp32 (the weight converts exactly):
    |error| <= u (|exact| + 2 w |x - e|), u = 2^-24, the bound of fma(w, x - e, e) with a rounded
    difference and a rounded weight w = 1 - decay."""
    es, xs = random_lists([100003], torch.float32, weight_dtype, seed=6)
    e0, x0, w = es[0].double(), xs[0].double(), 0.001
    exact = e0 * 0.999 + x0 * w
    ema_update_(es, xs, 0.999)
    bound = 2.0 ** -24 * (exact.abs() + 2 * w * (x0 - e0).abs())
    excess = ((es[0].double() - exact).abs() - bound).max().item()
    assert excess <= 0, excess


def test_bfloat16_shadow_stalls_float32_shadow_tracks():
    """The documented trap: with decay 0.9999, a bf16 shadow of bf16 weights that sit 0.5 away
    never moves (each step is 5e-5, under half a bf16 ulp at 1.0, 2^-8), while an fp32 shadow of
    the same weights follows the closed form 1.5 - 0.5 * decay^n."""
    weights = [torch.full((64,), 1.5, dtype=torch.bfloat16)]
    bf16_shadow = [torch.ones(64, dtype=torch.bfloat16)]
    fp32_shadow = [torch.ones(64, dtype=torch.float32)]
    for _ in range(1000):
        ema_update_(bf16_shadow, weights, 0.9999)
        ema_update_(fp32_shadow, weights, 0.9999)
    assert torch.equal(bf16_shadow[0], torch.ones(64, dtype=torch.bfloat16))
    expected = 1.5 - 0.5 * 0.9999 ** 1000
    assert abs(fp32_shadow[0][0].item() - expected) < 1e-5
    assert fp32_shadow[0][0].item() > 1.04


# --------------------------------------------------------------------------------------------
# Fuzz in apex's style: chunk boundaries, many tensors, every pairing in one call, in place


@pytest.mark.parametrize("profiles", [1, 2, 5])
def test_fuzz_boundaries_many_tensors_all_pairings(profiles):
    rnd = random.Random(profiles)
    sizes = [rnd.choice(BOUNDARY_SIZES[:12]) for _ in range(300)] + BOUNDARY_SIZES + [0, 0]
    rnd.shuffle(sizes)
    gen = torch.Generator().manual_seed(profiles)
    xs, shadows = [], [[] for _ in range(profiles)]
    for k, n in enumerate(sizes):
        shadow_dtype, weight_dtype = PAIRINGS[k % len(PAIRINGS)]
        base = torch.randn(n + 1, generator=gen)
        x = base[k % 2:k % 2 + n].to(weight_dtype) if k % 3 else base[1:].to(weight_dtype)[:n]
        xs.append(x)
        for p in range(profiles):
            # Odd offsets into a larger buffer: the kernels' unaligned path.
            buf = torch.randn(n + 1, generator=gen).to(shadow_dtype)
            shadows[p].append(buf[1:] if (k + p) % 2 else buf[:n])
    decays = [0.99, 0.3, 0.9999, 0.5, 0.0][:profiles]
    expected = [lerp_expected(shadows[p], xs, decays[p]) for p in range(profiles)]
    pointers = [[e.data_ptr() for e in lst] for lst in shadows]
    ema_update_multi_(shadows, xs, decays)
    for p in range(profiles):
        assert [e.data_ptr() for e in shadows[p]] == pointers[p]
        assert_equal_lists(shadows[p], expected[p], f"profile {p}")


def test_multi_equals_separate_updates():
    es1, xs = random_lists([5, 40000, 3], torch.float32, torch.bfloat16, seed=7)
    es2 = [e.clone() for e in es1]
    sep1, sep2 = [e.clone() for e in es1], [e.clone() for e in es2]
    ema_update_multi_([es1, es2], xs, torch.tensor([0.999, 0.9]))
    ema_update_(sep1, xs, torch.tensor(0.999))
    ema_update_(sep2, xs, torch.tensor(0.9))
    assert_equal_lists(es1, sep1)
    assert_equal_lists(es2, sep2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_layouts(backend):
    """Transposed, strided and channels-last shadows and weights are updated in place correctly."""
    g = torch.Generator().manual_seed(8)
    x_t = torch.randn(37, 53, generator=g).t()                       # non-contiguous weight
    e_c = torch.randn(53, 37, generator=g)                            # contiguous shadow
    x_c = torch.randn(53, 37, generator=g)
    e_t = torch.randn(37, 53, generator=g).t()                        # non-contiguous shadow
    x_s = torch.randn(100, generator=g)[::3]
    e_s = torch.randn(200, generator=g)[::6]                          # strided both
    x_cl = torch.randn(2, 3, 5, 7, generator=g).to(memory_format=torch.channels_last)
    e_cl = torch.randn(2, 3, 5, 7, generator=g).to(memory_format=torch.channels_last)
    shadows, weights = [e_c, e_t, e_s, e_cl], [x_t, x_c, x_s, x_cl]
    expected = lerp_expected(shadows, weights, 0.8)
    storages = [e.untyped_storage().data_ptr() for e in shadows]
    run_on(backend, ema_update_, shadows, weights, 0.8)
    assert [e.untyped_storage().data_ptr() for e in shadows] == storages
    assert e_cl.is_contiguous(memory_format=torch.channels_last)
    assert_equal_lists(shadows, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    """Empty lists and empty tensors are no-ops that leave their neighbours' updates intact."""
    run_on(backend, ema_update_, [], [], 0.9)
    e, x = torch.empty(0, 3), torch.empty(0, 3)
    full_e, full_x = torch.zeros(5), torch.ones(5)
    run_on(backend, ema_update_, [e, full_e, e.clone()], [x, full_x, x], 0.9)
    assert e.shape == (0, 3) and torch.equal(full_e, torch.full((5,), 0.1))
    run_on(backend, ema_update_multi_, [[e, full_e], [e.clone(), full_e.clone()]], [x, full_x], [1.0, 0.0])
    assert torch.equal(full_e, torch.full((5,), 0.1))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("decay_dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_tensor_decay(backend, decay_dtype):
    decay = torch.tensor(0.999, dtype=decay_dtype)
    es, xs = random_lists([10, 5000], torch.float32, torch.float32, seed=9)
    expected = lerp_expected(es, xs, decay.double().item())
    run_on(backend, ema_update_, es, xs, decay)
    assert_equal_lists(es, expected)


def test_large_tensor_int64_offsets():
    """A tensor bigger than one parallel task with the tail past 2^16 chunks of 4 elements."""
    es, xs = random_lists([(1 << 20) + 3], torch.float32, torch.float16, seed=10)
    expected = lerp_expected(es, xs, 0.95)
    ema_update_(es, xs, 0.95)
    assert_equal_lists(es, expected)


# --------------------------------------------------------------------------------------------
# Errors: raised before anything is written, naming the argument


def _error_cases():
    ok_e = [torch.zeros(3), torch.zeros(4)]
    ok_x = [torch.ones(3), torch.ones(4)]
    shared = torch.zeros(8)
    b = torch.arange(12.0)
    e1, e2, w = torch.zeros(3), torch.zeros(3), torch.ones(3)
    with torch.inference_mode():
        inference = torch.zeros(3)
    cases = [
        # A shadow sharing elements with a weight (issue #13 item 2: before, the CPU kernel gave
        # [0.5, 1.25, 2.125, ...], a weight read while written; a weight that is another shadow gave
        # results depending on sizes and threads).
        ("shadow-overlaps-weight", [b[1:]], [b[:-1]], 0.5, ValueError,
         r"ema_tensors\[0\] and tensors\[0\] share memory"),
        ("weight-is-another-shadow", [e1, e2], [w, e1], 0.5, ValueError,
         r"ema_tensors\[0\] and tensors\[1\] share memory"),
        ("shadow-is-its-weight", [e1], [e1], 0.5, ValueError, r"ema_tensors\[0\] and tensors\[0\] share memory"),
        # An inference tensor written outside inference_mode (torch's in-place ops raise; before: written).
        ("inference-shadow", [e1, inference], [w, w], 0.5, RuntimeError, r"ema_tensors\[1\] is an inference tensor"),
        ("length", [torch.zeros(3)], ok_x, 0.9, ValueError, "ema_tensors"),
        ("shape", ok_e, [torch.ones(3), torch.ones(5)], 0.9, ValueError, r"ema_tensors\[1\]"),
        ("pairing", [torch.zeros(3), torch.zeros(4, dtype=torch.bfloat16)], ok_x, 0.9, TypeError,
         r"ema_tensors\[1\]"),
        ("fp16-of-bf16", ok_e[:1] + [torch.zeros(4, dtype=torch.float16)],
         ok_x[:1] + [torch.ones(4, dtype=torch.bfloat16)], 0.9, TypeError, r"ema_tensors\[1\]"),
        ("int-weight", ok_e, ok_x[:1] + [torch.ones(4, dtype=torch.int64)], 0.9, TypeError, r"tensors\[1\]"),
        ("int-shadow", ok_e[:1] + [torch.zeros(4, dtype=torch.int32)], ok_x, 0.9, TypeError, r"ema_tensors\[1\]"),
        ("overlap", ok_e[:1] + [torch.zeros(1).expand(4)], ok_x, 0.9, ValueError, r"ema_tensors\[1\]"),
        ("listed-twice", [shared[:3], shared[:3]], [torch.ones(3), torch.ones(3)], 0.9, ValueError,
         r"ema_tensors\[0\] and ema_tensors\[1\] share memory"),
        ("views-sharing", [shared[:3], shared[2:6]], ok_x, 0.9, ValueError,
         r"ema_tensors\[0\] and ema_tensors\[1\] share memory"),
        ("decay-high", ok_e, ok_x, 1.5, ValueError, "decay"),
        ("decay-negative", ok_e, ok_x, -0.1, ValueError, "decay"),
        ("decay-nan", ok_e, ok_x, float("nan"), ValueError, "decay"),
        ("decay-bool", ok_e, ok_x, True, TypeError, "decay"),
        ("decay-str", ok_e, ok_x, "0.9", TypeError, "decay"),
        ("decay-tensor-range", ok_e, ok_x, torch.tensor(1.01), ValueError, "decay"),
        ("decay-tensor-shape", ok_e, ok_x, torch.tensor([0.9, 0.9]), ValueError, "decay"),
        ("decay-tensor-int", ok_e, ok_x, torch.tensor(1), TypeError, "decay"),
        ("not-a-list", torch.zeros(3), ok_x, 0.9, TypeError, "ema_tensors"),
        ("not-tensors", [torch.zeros(3), 4.0], ok_x, 0.9, TypeError, r"ema_tensors\[1\]"),
    ]
    return [pytest.param(*c[1:], id=c[0]) for c in cases]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shadows, weights, decay, error, match", _error_cases())
def test_errors_raise_before_writing(backend, shadows, weights, decay, error, match):
    before = [s.clone() if isinstance(s, torch.Tensor) else s for s in
              (shadows if isinstance(shadows, list) else [shadows])]
    with pytest.raises(error, match=match):
        run_on(backend, ema_update_, shadows, weights, decay)
    after = shadows if isinstance(shadows, list) else [shadows]
    for b, a in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_errors(backend):
    e, x = [torch.zeros(3)], [torch.ones(3)]
    with pytest.raises(ValueError, match="decays"):
        run_on(backend, ema_update_multi_, [e, [torch.zeros(3)]], x, [0.9])
    with pytest.raises(ValueError, match=r"ema_lists\[1\]"):
        run_on(backend, ema_update_multi_, [e, []], x, [0.9, 0.9])
    with pytest.raises(ValueError, match=r"ema_lists\[1\]\[0\]"):
        run_on(backend, ema_update_multi_, [e, [torch.zeros(4)]], x, [0.9, 0.9])
    with pytest.raises(ValueError, match=r"decays\[1\]"):
        run_on(backend, ema_update_multi_, [e, [torch.zeros(3)]], x, [0.9, 2.0])
    with pytest.raises(ValueError, match="decays"):
        run_on(backend, ema_update_multi_, [e, [torch.zeros(3)]], x, torch.tensor([0.9, -1.0]))
    with pytest.raises(ValueError, match="ema_lists"):
        run_on(backend, ema_update_multi_, [], x, [])
    with pytest.raises(ValueError, match=r"ema_lists\[0\]\[0\] and ema_lists\[1\]\[0\] share memory"):
        run_on(backend, ema_update_multi_, [e, e], x, [0.9, 0.5])
    assert torch.equal(e[0], torch.zeros(3))


def test_version_counters_and_fake_tensors():
    """Eager calls bump the shadows' version counters (autograd sees the in-place write); under
    FakeTensorMode the call goes through the custom op's fake kernel."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    es, xs = random_lists([10, 20], torch.float32, torch.float32, seed=20)
    versions = [e._version for e in es]
    ema_update_(es, xs, 0.9)
    ema_update_multi_([es], xs, [0.9])
    assert all(e._version >= v + 2 for e, v in zip(es, versions))
    with FakeTensorMode():
        fe, fx = [torch.empty(10)], [torch.empty(10)]
        ema_update_(fe, fx, 0.9)
        ema_update_multi_([fe], fx, torch.tensor([0.5]))


def test_kernel_level_checks():
    """The C++ op checks its preconditions itself (the EMA class calls it directly)."""
    with pytest.raises(ValueError, match=r"ema_lists\[1\]\[0\] has shape"):
        torch.ops.noisefast_C.ema_update_multi_([torch.zeros(3), torch.zeros(2)], [torch.ones(3)], [0.5, 0.5], None)
    with pytest.raises(ValueError, match="decay must be in"):
        torch.ops.noisefast_C.ema_update_([torch.zeros(3)], [torch.ones(3)], 2.0, None)
    with pytest.raises(ValueError, match="not both"):
        torch.ops.noisefast_C.ema_update_multi_([torch.zeros(3)], [torch.ones(3)], [0.5], torch.tensor([0.5]))


# --------------------------------------------------------------------------------------------
# torch.library and torch.compile


def test_opcheck():
    es, xs = random_lists([7, 300], torch.float32, torch.bfloat16, seed=11)
    torch.library.opcheck(ema_update_op_, (es, xs, 0.9, None))
    torch.library.opcheck(ema_update_op_, (es, xs, 0.0, torch.tensor(0.5)))
    es2 = [e.clone() for e in es]
    torch.library.opcheck(ema_update_multi_op_, (es + es2, xs, [0.9, 0.5], None))
    torch.library.opcheck(ema_update_multi_op_, (es + es2, xs, [], torch.tensor([0.9, 0.5], dtype=torch.float64)))


def test_torch_compile_fullgraph():
    torch._dynamo.reset()

    def step(shadows, fast, weights, decay):
        ema_update_(shadows, weights, decay)
        ema_update_multi_([shadows, fast], weights, [0.99, 0.5])

    es, xs = random_lists([33, 1000], torch.float32, torch.float32, seed=12)
    fast = [e.clone() for e in es]
    es_eager, fast_eager = [e.clone() for e in es], [e.clone() for e in fast]
    decay = torch.tensor(0.9)
    torch.compile(step, fullgraph=True)(es, fast, xs, decay)
    step(es_eager, fast_eager, xs, decay)
    assert_equal_lists(es, es_eager)
    assert_equal_lists(fast, fast_eager)


# --------------------------------------------------------------------------------------------
# CUDA (run where a GPU is lent)


def _ulp_diff(a, b):
    """Largest distance in float32 ulps (sign-magnitude bits mapped to a monotonic integer)."""
    def ordinal(t):
        bits = t.float().view(torch.int32).long()
        magnitude = bits & 0x7FFFFFFF
        return torch.where(bits < 0, -magnitude, magnitude)
    return (ordinal(a) - ordinal(b)).abs().max().item() if a.numel() else 0


@pytest.mark.cuda
@pytest.mark.parametrize("profiles", [1, 2, 5])
def test_cuda_fuzz_matches_reference(profiles):
    """Several launches (hundreds of tensors), chunk boundaries, odd offsets, every pairing."""
    rnd = random.Random(100 + profiles)
    sizes = [rnd.choice(BOUNDARY_SIZES) for _ in range(400)] + [0]
    gen = torch.Generator().manual_seed(profiles)
    xs, shadows = [], [[] for _ in range(profiles)]
    for k, n in enumerate(sizes):
        shadow_dtype, weight_dtype = PAIRINGS[k % len(PAIRINGS)]
        x = torch.randn(n + 1, generator=gen).to(weight_dtype).cuda()
        xs.append(x[1:] if k % 3 == 0 else x[:n])
        for p in range(profiles):
            e = torch.randn(n + 1, generator=gen).to(shadow_dtype).cuda()
            shadows[p].append(e[1:] if (k + p) % 2 else e[:n])
    decays = [0.99, 0.3, 0.9999, 0.5, 0.0][:profiles]
    expected = [[s.clone() for s in lst] for lst in shadows]
    with noisefast.use_backend("reference"):
        ema_update_multi_(expected, xs, decays)
    ema_update_multi_(shadows, xs, decays)
    torch.cuda.synchronize()
    for p in range(profiles):
        for i, (a, e) in enumerate(zip(shadows[p], expected[p])):
            # torch.lerp on CUDA and the kernel both use fused multiply-adds; allow one ulp in case
            # the compiler contracts lerp differently.
            if a.dtype in (torch.float32,):
                assert _ulp_diff(a, e) <= 1, (p, i)
            else:
                assert_close(a, e, rtol=2 * torch.finfo(a.dtype).eps, atol=0, what=f"[{p}][{i}]")


@pytest.mark.cuda
def test_cuda_float32_equals_lerp():
    es, xs = random_lists([1, 65537, 1 << 20], torch.float32, torch.float32, seed=18, device="cuda")
    for decay in DECAYS:
        expected = lerp_expected(es, xs, decay)
        ema_update_(es, xs, decay)
        for a, e in zip(es, expected):
            assert _ulp_diff(a, e) <= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_decay_tensor_means_its_float32_value(backend):
    """A float32 decay tensor holding 0.9 is float32(0.9), not the Python float 0.9: what the CUDA
    graph test below must expect from its float32 device decay."""
    es, xs = random_lists([1000], torch.float32, torch.float32, seed=3)
    by_tensor, by_value, by_float = ([e.clone() for e in es] for _ in range(3))
    run_on(backend, ema_update_, by_tensor, xs, torch.tensor(0.9))
    run_on(backend, ema_update_, by_value, xs, torch.tensor(0.9).item())
    run_on(backend, ema_update_, by_float, xs, 0.9)
    assert torch.equal(by_tensor[0], by_value[0]) and not torch.equal(by_tensor[0], by_float[0])


@pytest.mark.cuda
def test_cuda_device_decay_graph_capture():
    """A decay tensor on the GPU is read by the kernel: the update can be captured in a CUDA
    graph and replayed with new decays."""
    es, xs = random_lists([1000, 70000], torch.float32, torch.bfloat16, seed=19, device="cuda")
    decay = torch.tensor(0.9, device="cuda")
    expected = [e.clone() for e in es]
    ema_update_(es, xs, decay)  # warm-up outside capture
    ema_update_(expected, xs, torch.tensor(0.9).item())  # the float32 value the kernel reads
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ema_update_(es, xs, decay)
    for value in (0.5, 0.99):
        decay.fill_(value)
        graph.replay()
        ema_update_(expected, xs, torch.tensor(value).item())
    torch.cuda.synchronize()
    for a, e in zip(es, expected):
        assert _ulp_diff(a, e) <= 0


@pytest.mark.cuda
def test_cuda_errors_and_cpu_shadow():
    x = [torch.ones(3, device="cuda")]
    with pytest.raises(ValueError, match=r"ema_tensors\[0\]"):
        ema_update_([torch.zeros(3)], x, 0.9)
    with pytest.raises(ValueError, match="decay"):
        ema_update_([torch.zeros(3, device="cuda")], x, torch.tensor([0.5, 0.5], device="cuda"))
    shadow = torch.zeros(3, device="cuda")  # listed twice: two blocks would update it at once
    with pytest.raises(ValueError, match=r"ema_tensors\[0\] and ema_tensors\[1\] share memory"):
        ema_update_([shadow, shadow], [x[0], x[0]], 0.5)
    assert torch.equal(shadow, torch.zeros(3, device="cuda"))
    net = nn.Linear(8, 8).cuda()
    ema = EMA(net, decay=0.5, device="cpu")
    with torch.no_grad():
        net.weight.add_(2.0)
    ema.update(step=5)
    assert ema.averaged()["weight"].device.type == "cpu"
    assert torch.allclose(ema.averaged()["weight"], net.weight.detach().cpu() - 1.0)
    gpu = EMA(net, sigma_rels=(0.05, 0.1))
    gpu.update()
    assert torch.equal(gpu.averaged(1)["weight"], net.weight.detach())


def test_meta_tensors_are_checked_like_the_kernels():
    """Meta tensors run the kernels' metadata checks (as torch's meta kernels do) and write nothing;
    before, a bad call on meta tensors returned silently."""
    meta = lambda *s, dtype=torch.float32: torch.empty(s, device="meta", dtype=dtype)  # noqa: E731
    ema_update_([meta(3)], [meta(3)], 0.5)
    ema_update_multi_([[meta(3)], [meta(3)]], [meta(3)], [0.5, 0.9])
    with pytest.raises(ValueError, match=r"ema_tensors\[0\] has shape"):
        ema_update_([meta(3)], [meta(4)], 0.5)
    with pytest.raises(TypeError, match=r"ema_tensors\[0\]"):
        ema_update_([meta(3, dtype=torch.bfloat16)], [meta(3)], 0.5)
    with pytest.raises(ValueError, match=r"ema_lists\[1\]\[0\]"):
        ema_update_multi_([[meta(3)], [meta(2)]], [meta(3)], [0.5, 0.9])
    with pytest.raises(ValueError, match="decay"):
        ema_update_([meta(3)], [meta(3)], torch.tensor([0.5, 0.5]))


def test_inference_tensors_inside_inference_mode_are_updated():
    with torch.inference_mode():
        e, x = torch.zeros(3), torch.ones(3)
        ema_update_([e], [x], 0.5)
    assert torch.equal(e, torch.full((3,), 0.5))
