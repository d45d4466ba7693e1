"""Property-based tests over the public API (hypothesis; issue #13, "make it hard to reintroduce").

Each test draws a *plan* (shapes, dtypes, strides, device cpu or meta, values with NaN, inf,
negatives and zeros, numbers or tensors, arguments that alias one another) and builds the
arguments from it twice, identically, so that the C++ CPU kernels and the reference backend (the
eager specification, noisefast/reference/) each get their own copy, aliasing included. Then:

- both return, and the results agree (the dtype's tolerance; the same NaN positions), or
- both raise the same type of error (TypeError/ValueError, or torch's RuntimeError for an
  inference tensor), whose message names one of the call's arguments, and every tensor the call
  writes in place is unchanged (nothing written before the error);
- on meta tensors the op returns what the CPU returns (shape, dtype), or raises the error type the
  CPU raises for the same metadata.

Examples are derandomized in CI (profile "ci" in tests/conftest.py: a fixed set of examples, no
example database, a few seconds per test); ``NOISEFAST_HYPOTHESIS_PROFILE=thorough`` draws many more.
"""
from __future__ import annotations

import math
import re
from typing import Callable, List, Optional

import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import event, given, strategies as st  # noqa: E402

import noisefast  # noqa: E402
from noisefast.reference import consistency_output as ref_consistency  # noqa: E402

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
SPECIALS = (float("nan"), float("inf"), -float("inf"), 0.0, -0.0, -1.0, 1e30)
TOLERANCE = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-6, 2e-6), torch.float16: (2e-3, 2e-3),
             torch.bfloat16: (1.6e-2, 1.6e-2)}


# --- plans and the tensors they build ----------------------------------------------------------

def rarely(one_in: int):
    """True about once in ``one_in`` draws (a plain integer draw would favour 0 and its boundary)."""
    return st.sampled_from([False] * (one_in - 1) + [True])


@st.composite
def tensor_plans(draw, *, shape=None, dims=(0, 3), dtypes=FLOATS, bad_dtype=True, layouts=None,
                 specials=True, positive=False, device=True):
    """A recipe for one tensor: shape, dtype, layout, values (seed, special values), device."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=dims[0], max_size=dims[1])))
    dtype = torch.int64 if bad_dtype and draw(rarely(12)) else draw(st.sampled_from(dtypes))
    layout = draw(st.sampled_from(layouts or ["contiguous", "transposed", "sliced", "expanded"]))
    return {"shape": tuple(shape), "dtype": dtype, "layout": layout, "seed": draw(st.integers(0, 2 ** 16)),
            "specials": specials and draw(rarely(4)), "positive": positive,
            "meta": device and draw(rarely(6))}


def build(plan, *, meta: Optional[bool] = None) -> torch.Tensor:
    """The tensor a plan describes (deterministic: two calls give equal, independent tensors)."""
    shape, dtype, layout = plan["shape"], plan["dtype"], plan["layout"]
    gen = torch.Generator().manual_seed(plan["seed"])
    values = torch.randn(shape, generator=gen, dtype=torch.float64) * 2
    if plan["positive"]:
        values = values.abs()
    if plan["specials"] and values.numel():
        picks = torch.randint(0, values.numel(), (max(1, values.numel() // 4),), generator=gen)
        kinds = torch.randint(0, len(SPECIALS), picks.shape, generator=gen)
        flat = values.view(-1)
        for p, k in zip(picks.tolist(), kinds.tolist()):
            flat[p] = SPECIALS[k]
    t = values.to(dtype) if dtype.is_floating_point else values.nan_to_num(0, 0, 0).to(dtype)
    if layout == "transposed" and t.dim() >= 2:
        t = t.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "sliced" and t.dim() >= 1:
        wide = torch.zeros(shape[:-1] + (2 * shape[-1],), dtype=dtype)
        t = wide[..., ::2].copy_(t)
    elif layout == "expanded" and t.dim() >= 1 and shape[0] > 1:
        t = t[:1].expand(shape)
    if meta if meta is not None else plan["meta"]:
        t = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return t


def numbers(*, allow_bad=True):
    good = st.floats(0.0, 3.0, allow_nan=False)
    if not allow_bad:
        return good
    return st.one_of(good, good, good, st.sampled_from([-0.5, float("nan"), float("inf"), 0.0]))


# --- running one call on two backends ---------------------------------------------------------

class Outcome:
    def __init__(self, value=None, error: Optional[BaseException] = None):
        self.value, self.error = value, error


def run(backend: str, call: Callable[[], object]) -> Outcome:
    try:
        with noisefast.use_backend(backend):
            return Outcome(value=call())
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:
        return Outcome(error=exc)


def names_an_argument(exc: BaseException, names) -> bool:
    message = str(exc)
    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?![\w])", message) for n in names)


def tensors_in(value) -> List[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v)]
    return []


def assert_close(a: torch.Tensor, b: torch.Tensor, what: str, noisy: bool = False) -> None:
    """Within the dtype's tolerance; with ``noisy``, float64 results hold float32 normals (the
    noise stream's), whose last bit may differ between backends (log, sin and cos)."""
    assert a.shape == b.shape and a.dtype == b.dtype, f"{what}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if a.device.type == "meta":
        return
    rtol, atol = TOLERANCE.get(torch.float32 if noisy and a.dtype == torch.float64 else a.dtype, (0, 0))
    atol *= 4 if noisy else 1
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{what}: {m}")


def check_call(make_args: Callable[[], tuple], call: Callable, names, *, written=lambda args: [],
               noisy: bool = False) -> None:
    """make_args() -> fresh identical arguments; call(*args) on the CPU kernels and the reference."""
    outcomes, before, after = [], [], []
    for backend in ("cpu", "reference"):
        args = make_args()
        targets = written(args)
        before.append([t.clone() if t.device.type != "meta" else None for t in targets])
        outcomes.append(run(backend, lambda: call(*args)))
        after.append(targets)
    cpu, ref = outcomes
    event(f"raised {type(cpu.error).__name__}" if cpu.error is not None else "returned")
    if cpu.error is not None or ref.error is not None:
        assert cpu.error is not None and ref.error is not None, (
            f"only one backend raised: cpu {cpu.error!r}, reference {ref.error!r}")
        assert type(cpu.error) is type(ref.error), f"cpu raised {cpu.error!r}, reference {ref.error!r}"
        for exc in (cpu.error, ref.error):
            assert not isinstance(exc, NotImplementedError), repr(exc)
            assert names_an_argument(exc, names), f"the error names no argument of {names}: {exc!r}"
        for old, new in zip(before, after):
            for o, n in zip(old, new):
                if o is not None:
                    assert torch.equal(o.nan_to_num(), n.nan_to_num()) and torch.equal(o.isnan(), n.isnan()), \
                        "an in-place target changed though the call raised"
        return
    got, want = tensors_in(cpu.value), tensors_in(ref.value)
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        assert_close(a, b, f"result {k}", noisy)
    for k, (a, b) in enumerate(zip(after[0], after[1])):
        assert_close(a, b, f"in-place target {k}", noisy)


def check_meta(make_args_cpu: Callable[[], tuple], make_args_meta: Callable[[], tuple], call: Callable, names):
    """On meta tensors: the CPU's result's metadata, or (when meta raises) the CPU's error type."""
    meta = run("cpu", lambda: call(*make_args_meta()))
    cpu = run("cpu", lambda: call(*make_args_cpu()))
    event("meta: " + (f"raised {type(meta.error).__name__}" if meta.error is not None else "returned"))
    if meta.error is not None:
        assert cpu.error is not None, f"meta raised {meta.error!r}, the CPU returned"
        assert type(meta.error) is type(cpu.error), f"meta raised {meta.error!r}, the CPU {cpu.error!r}"
        assert names_an_argument(meta.error, names), f"the error names no argument of {names}: {meta.error!r}"
        return
    if cpu.error is None:
        for a, b in zip(tensors_in(meta.value), tensors_in(cpu.value)):
            assert a.device.type == "meta" and a.shape == b.shape and a.dtype == b.dtype


def check(make_args: Callable[..., tuple], call: Callable, names, meta: bool, **kwargs) -> None:
    """check_meta for a plan on meta tensors, else check_call; make_args(on_meta) builds the arguments."""
    if meta:
        check_meta(lambda: make_args(False), lambda: make_args(True), call, names)
    else:
        check_call(make_args, call, names, **kwargs)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- the ops -----------------------------------------------------------------------------------

@st.composite
def std_args(draw, x_shape):
    """std: a number, or a tensor of a shape that broadcasts to x (or does not)."""
    if draw(st.booleans()):
        return {"number": draw(numbers())}
    dims = draw(st.integers(0, len(x_shape)))
    shape = list(x_shape[len(x_shape) - dims:])
    for i in range(len(shape)):
        if draw(st.integers(0, 2)) == 0:
            shape[i] = 1
    if draw(rarely(8)):
        shape = [draw(st.integers(2, 3))] + shape  # more dims than x, or a size that does not broadcast
    return {"tensor": draw(tensor_plans(shape=shape, dtypes=(torch.float32, torch.float64), positive=True,
                                        layouts=["contiguous", "transposed"], device=False))}


def std_value(std, meta=False):
    return std["number"] if "number" in std else build(std["tensor"], meta=meta)


@given(data=st.data())
def test_gaussian_noise(data):
    x = data.draw(tensor_plans())
    std = checkable(data.draw(std_args(x["shape"])), x["meta"])
    seed = data.draw(st.integers(0, 2 ** 31))

    def args(on_meta=x["meta"]):
        return build(x, meta=on_meta), std_value(std, meta=on_meta)

    call = lambda a, s: noisefast.gaussian_noise(a, s, generator=generator(seed))  # noqa: E731
    check(args, call, ["x", "std"], x["meta"], noisy=True)


@st.composite
def tensor_lists(draw, *, max_size=3, in_place=True):
    """Plans of a list of tensors; in place, some entries may alias earlier ones."""
    plans = draw(st.lists(tensor_plans(dims=(0, 2), layouts=["contiguous", "transposed", "sliced", "expanded"],
                                       device=False), min_size=0, max_size=max_size))
    aliases = [draw(st.sampled_from(["own"] * 4 + ["same", "overlap"])) if k and in_place else "own"
               for k in range(len(plans))]
    return plans, aliases


def build_list(plans, aliases, meta=False) -> List[torch.Tensor]:
    out = []
    for plan, alias in zip(plans, aliases):
        t = build(plan, meta=meta)
        if alias == "same":
            t = out[0]
        elif alias == "overlap" and out[0].numel() > 1 and out[0].dim() >= 1:
            t = out[0].reshape(-1)[1:] if out[0].is_contiguous() else out[0][..., :1]
        out.append(t)
    return out


@given(data=st.data())
def test_foreach_gaussian_noise(data):
    in_place = data.draw(st.booleans())
    plans, aliases = data.draw(tensor_lists(in_place=in_place))
    kind = data.draw(st.sampled_from(["number", "list", "tensor"]))
    if kind == "number":
        std = data.draw(numbers())
    elif kind == "list":
        std = data.draw(st.lists(numbers(), min_size=max(0, len(plans) - 1), max_size=len(plans) + 1))
    else:
        std = data.draw(st.sampled_from([0.5, float("nan"), -1.0]))
    seed = data.draw(st.integers(0, 2 ** 31))
    meta = data.draw(rarely(6))
    if meta and kind == "tensor":
        std = 0.5  # (see checkable)

    def args(on_meta=meta):
        s = torch.tensor(std, dtype=torch.float64) if kind == "tensor" else std
        return build_list(plans, aliases, meta=on_meta), s

    op = noisefast.foreach_gaussian_noise_ if in_place else noisefast.foreach_gaussian_noise
    call = lambda ts, s: op(ts, s, generator=generator(seed))  # noqa: E731
    names = ["tensors", "std"] + [f"tensors[{i}]" for i in range(len(plans))]
    check(args, call, names, meta, written=lambda a: list(a[0]) if in_place else [], noisy=True)


@given(data=st.data())
def test_ema_update(data):
    n = data.draw(st.integers(0, 3))
    profiles = data.draw(st.integers(1, 2))
    multi = profiles > 1 or data.draw(st.booleans())
    weights = [data.draw(tensor_plans(dims=(0, 2), device=False)) for _ in range(n)]
    shadows = []
    for p in range(profiles):
        for w in weights:
            dtype = data.draw(st.sampled_from([w["dtype"], torch.float32, torch.float16]))
            shape = w["shape"] + (2,) if data.draw(rarely(10)) else w["shape"]
            plan = data.draw(tensor_plans(shape=shape, dtypes=(dtype,), bad_dtype=False, device=False,
                                          layouts=["contiguous", "transposed", "sliced", "expanded"]))
            shadows.append(plan)
    alias = data.draw(st.sampled_from(["none"] * 6 + ["shadow-is-weight", "shadow-twice", "weight-overlaps-shadow"]))
    decay_kind = data.draw(st.sampled_from(["number", "tensor"]))
    decays = [data.draw(st.one_of(st.floats(0.0, 1.0), st.sampled_from([1.5, -0.1, float("nan")])))
              for _ in range(profiles)]
    meta = data.draw(rarely(6))
    if meta and decay_kind == "tensor":
        decays = [d if 0 <= d <= 1 else 0.5 for d in decays]  # (see checkable)

    def args(on_meta=meta):
        xs = [build(w, meta=on_meta) for w in weights]
        es = [build(s, meta=on_meta) for s in shadows]
        if n and alias == "shadow-is-weight":
            es[0] = xs[0]
        elif n > 1 and alias == "shadow-twice":
            es[1] = es[0]
        elif n and alias == "weight-overlaps-shadow" and es[0].dim() >= 1 and es[0].numel() > 1:
            xs[0] = es[0].reshape(-1)[1:] if es[0].is_contiguous() else es[0]
        if decay_kind == "tensor":
            d = torch.tensor(decays if multi else decays[0], dtype=torch.float64)
        else:
            d = decays if multi else decays[0]
        lists = [es[p * n:(p + 1) * n] for p in range(profiles)]
        return (lists if multi else es), xs, d

    if multi:
        call = lambda e, x, d: noisefast.ema_update_multi_(e, x, d)  # noqa: E731
        names = ["ema_lists", "decays", "tensors"] + [f"ema_lists[{p}][{i}]" for p in range(profiles) for i in range(n)]
        written = lambda a: [t for lst in a[0] for t in lst]  # noqa: E731
    else:
        call = lambda e, x, d: noisefast.ema_update_(e, x, d)  # noqa: E731
        names = ["ema_tensors", "decay", "tensors"] + [f"ema_tensors[{i}]" for i in range(n)]
        written = lambda a: list(a[0])  # noqa: E731
    names += [f"tensors[{i}]" for i in range(n)]
    check(args, call, names, meta, written=written)


@st.composite
def per_sample_values(draw, batch, positive=True):
    """A number, a one-element tensor, [B] or [B, 1, ...] (or a wrong shape): sigma, weight, alpha."""
    kind = draw(st.sampled_from(["number", "one", "batch", "batch-ones"] * 3 + ["wrong"]))
    if kind == "number":
        return {"number": draw(numbers())}
    shape = {"one": (1,), "batch": (batch,), "batch-ones": (batch, 1, 1), "wrong": (batch + 1,)}[kind]
    return {"tensor": draw(tensor_plans(shape=shape, dtypes=(torch.float32, torch.float64), positive=positive,
                                        layouts=["contiguous"], device=False))}


def checkable(spec, meta: bool):
    """A value tensor (std, sigma, weight, alpha) without NaN/inf for a meta plan: a meta tensor
    has no values to check, so its CPU twin must not fail on values either (two errors in one call
    may be reported in either order)."""
    if meta and spec is not None and "tensor" in spec:
        return {"tensor": dict(spec["tensor"], specials=False)}
    return spec


def value_of(spec, meta=False):
    return spec["number"] if "number" in spec else build(spec["tensor"], meta=meta)


@given(data=st.data())
def test_consistency_output(data):
    raw = data.draw(tensor_plans(dims=(1, 3)) if not data.draw(rarely(10)) else tensor_plans(dims=(0, 0)))
    x = dict(raw, dtype=data.draw(st.sampled_from(FLOATS)), seed=raw["seed"] + 1,
             layout=data.draw(st.sampled_from(["contiguous", "transposed", "expanded"])))
    if data.draw(rarely(10)):
        x["shape"] = x["shape"] + (1,)
    sigma = checkable(data.draw(per_sample_values(raw["shape"][0] if raw["shape"] else 1)), raw["meta"])
    sigma_data = data.draw(st.sampled_from([0.5, 1.3, 0.7, 0.0]))
    meta = raw["meta"]

    def args(on_meta=meta):
        return build(raw, meta=on_meta), build(x, meta=on_meta), value_of(sigma, meta=on_meta)

    call = lambda r, a, s: noisefast.consistency_output(r, a, s, sigma_data=sigma_data)  # noqa: E731
    names = ["raw", "x", "sigma", "sigma_data"]
    check(args, call, names, meta)


@given(data=st.data())
def test_consistency_scalings_match_the_reference(data):
    sigma = data.draw(st.one_of(numbers(), st.just("tensor")))
    if sigma == "tensor":
        sigma = build(data.draw(tensor_plans(dims=(1, 1), dtypes=(torch.float32, torch.float64), positive=True,
                                             device=False)))
    try:
        got = noisefast.consistency_scalings(sigma, 0.5, 0.002)
    except (ValueError, TypeError) as exc:
        assert names_an_argument(exc, ["sigma"])
        bad = sigma.double() if isinstance(sigma, torch.Tensor) else torch.tensor(sigma)
        assert isinstance(exc, TypeError) or bool((~torch.isfinite(bad) | (bad < 0)).any()), exc
        return
    want = ref_consistency.consistency_scalings(sigma, 0.5, 0.002)
    for g, w in zip(got, want):
        if isinstance(g, torch.Tensor):
            assert torch.equal(g, w)
        else:
            assert g == w or (math.isnan(g) and math.isnan(w))


@given(data=st.data())
def test_pseudo_huber_loss(data):
    inp = data.draw(tensor_plans(dims=(1, 3)) if not data.draw(rarely(10)) else tensor_plans(dims=(0, 0)))
    target = dict(inp, seed=inp["seed"] + 1, dtype=data.draw(st.sampled_from(FLOATS)),
                  layout=data.draw(st.sampled_from(["contiguous", "transposed", "sliced"])))
    weight = checkable(data.draw(st.one_of(st.none(), per_sample_values(inp["shape"][0] if inp["shape"] else 1))),
                       inp["meta"])
    c = data.draw(st.one_of(st.none(), numbers()))
    reduction = data.draw(st.sampled_from(["mean", "sum", "none"] * 3 + ["avg"]))
    per_sample = data.draw(st.booleans())
    meta = inp["meta"]

    def args(on_meta=meta):
        w = None if weight is None else value_of(weight, meta=on_meta)
        return build(inp, meta=on_meta), build(target, meta=on_meta), w

    call = lambda i, t, w: noisefast.pseudo_huber_loss(i, t, c=c, weight=w, reduction=reduction,  # noqa: E731
                                                       per_sample=per_sample)
    names = ["input", "target", "weight", "c", "reduction"]
    check(args, call, names, meta)


@given(data=st.data())
def test_consistency_pair_and_add_noise(data):
    x = data.draw(tensor_plans(dims=(1, 3)) if not data.draw(rarely(10)) else tensor_plans(dims=(0, 0)))
    batch = x["shape"][0] if x["shape"] else 1
    which = data.draw(st.sampled_from(["consistency_pair", "add_noise"]))
    a = checkable(data.draw(per_sample_values(batch)), x["meta"])
    b = checkable(data.draw(per_sample_values(batch, positive=False)), x["meta"])
    gamma = data.draw(st.sampled_from([0.0, 0.1, 0.0, -1.0]))
    seed = data.draw(st.integers(0, 2 ** 31))
    meta = x["meta"]

    def args(on_meta=meta):
        return build(x, meta=on_meta), value_of(a, meta=on_meta), value_of(b, meta=on_meta)

    if which == "consistency_pair":
        call = lambda t, s, s2: noisefast.consistency_pair(t, s, s2, generator=generator(seed))  # noqa: E731
        names = ["x", "sigma", "sigma_next"]
    else:
        call = lambda t, s, al: noisefast.add_noise(t, s, alpha=al, input_perturbation=gamma,  # noqa: E731
                                                    generator=generator(seed))
        names = ["x", "sigma", "alpha", "input_perturbation"]
    check(args, call, names, meta, noisy=True)


@given(size=st.lists(st.integers(0, 5), max_size=3),
       seed=st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([-1, 2 ** 64, 2 ** 63])),
       stream=st.one_of(st.integers(0, 2 ** 64 - 1), st.sampled_from([-1, 2 ** 64, 2 ** 63 + 5])),
       offset=st.integers(0, 2 ** 40), dtype=st.sampled_from(FLOATS))
def test_randn(size, seed, stream, offset, dtype):
    """One range of seeds and streams, [0, 2^64), on every backend (issue #13 item 10)."""
    call = lambda: noisefast.randn(*size, seed=seed, stream=stream, offset=offset, dtype=dtype)  # noqa: E731
    check_call(lambda: (), call, ["seed", "stream", "offset"], noisy=True)
    valid = 0 <= seed < 2 ** 64 and 0 <= stream < 2 ** 64
    assert (run("cpu", call).error is None) == valid


@st.composite
def level_tables(draw):
    """(sigmas, cdf) plans: a valid table (ascending sigmas, a nondecreasing cdf ending at 1) or a
    broken one (unsorted, negative or NaN sigma, a cdf that does not end at 1, wrong lengths)."""
    n = draw(st.integers(1, 6))
    sigmas = sorted(draw(st.lists(st.floats(0.001, 80.0), min_size=n, max_size=n, unique=True)))
    weights = draw(st.lists(st.floats(0.0, 1.0), min_size=max(n - 1, 0), max_size=max(n - 1, 0)))
    total = sum(weights)
    cdf = [sum(weights[:k + 1]) / total for k in range(len(weights))] if total > 0 else [1.0] * len(weights)
    if cdf:
        cdf[-1] = 1.0
    broken = draw(st.sampled_from(["none"] * 6 + ["unsorted", "nan", "cdf-end", "cdf-length"]))
    if broken == "unsorted" and n > 1:
        sigmas = sigmas[::-1]
    elif broken == "nan":
        sigmas[0] = float("nan")
    elif broken == "cdf-end" and cdf:
        cdf[-1] = 0.5
    elif broken == "cdf-length":
        cdf = cdf + [1.0]
    return sigmas, cdf


@given(data=st.data())
def test_sampled_consistency_pair(data):
    x = data.draw(tensor_plans(dims=(1, 3), device=False))
    sigmas, cdf = data.draw(level_tables())
    dtype = data.draw(st.sampled_from([torch.float64] * 4 + [torch.float32]))
    seed = data.draw(st.integers(0, 2 ** 31))

    def args():
        return build(x), torch.tensor(sigmas, dtype=dtype), torch.tensor(cdf, dtype=dtype)

    call = lambda t, s, c: tuple(noisefast.sampled_consistency_pair(t, s, c, generator=generator(seed)))  # noqa: E731
    check_call(args, call, ["x", "sigmas", "cdf"], noisy=True)


@given(data=st.data())
def test_mixup(data):
    x = data.draw(tensor_plans(dims=(1, 3)))
    batch = x["shape"][0] if x["shape"] else 0
    y_shape = (batch,) if not data.draw(rarely(10)) else (batch + 1,)
    alpha = data.draw(st.one_of(st.floats(0.0, 4.0), st.sampled_from([-1.0, float("nan"), 0.2])))
    seed = data.draw(st.integers(0, 2 ** 31))

    def args(on_meta=x["meta"]):
        y = torch.arange(y_shape[0]) % 3
        return build(x, meta=on_meta), y.to("meta") if on_meta else y

    call = lambda a, y: tuple(noisefast.mixup(a, y, alpha, generator=generator(seed)))  # noqa: E731
    check(args, call, ["x", "y", "alpha"], x["meta"])


@given(target_shape=st.lists(st.integers(0, 4), max_size=2), num_classes=st.integers(-1, 5),
       eps=st.one_of(st.floats(0.0, 1.0), st.sampled_from([-0.1, 1.5, float("nan")])), soft=st.booleans(),
       dtype=st.sampled_from([None, torch.float32, torch.float64, torch.bfloat16, torch.int64]))
def test_smooth_labels(target_shape, num_classes, eps, soft, dtype):
    def args():
        gen = torch.Generator().manual_seed(len(target_shape))
        if soft:
            return (torch.rand(tuple(target_shape) + (max(num_classes, 0),), generator=gen),)
        return (torch.randint(0, max(num_classes, 1), tuple(target_shape), generator=gen),)

    call = lambda t: noisefast.smooth_labels(t, num_classes, eps, dtype=dtype)  # noqa: E731
    check_call(args, call, ["target", "num_classes", "eps", "dtype"])
