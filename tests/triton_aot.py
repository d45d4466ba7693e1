"""Compile every Triton kernel variant noisefast's launchers select, for sm_90, without a GPU.

Run as a script (tests/test_aot_triton.py runs it in a subprocess, under CI's Triton and under
Triton 3.6, the GPU machine's):

    python tests/triton_aot.py [--triton-path DIR] [--json FILE] [--jobs N]

Why: on a machine without a GPU the Triton kernels only run through the interpreter
(TRITON_INTERPRET=1), which executes the Python body and never runs Triton's compiler, so compile
errors, approximate arithmetic and register spills stay hidden there.

How the variants are found: the public launchers of noisefast/triton/*.py are called on meta
tensors (nothing is allocated) over the inputs that steer their choices: every floating dtype,
each regime of their constexpr branches and tile sizes, 32- and 64-bit element counts. Kernel
launches are intercepted (``JITFunction.run``), and each launch is specialised exactly as Triton's
runtime would specialise it on a GPU (its own binder: argument types, constexprs, 16-byte
divisibility, integers equal to 1). So the constexprs and block sizes come from the launchers'
own code, not from a list here; what this file lists is inputs. Coverage is checked as well:
every launcher a ``Kernels`` table of noisefast/ops names, every kernel launched in
noisefast/triton, each value of each boolean constexpr.

Each distinct variant is compiled with ``triton.compile(ASTSource(...), target=GPUTarget("cuda",
90, 32))``. It fails on a compile error; on any stack frame or local memory in the cubin (register
spills, or arrays the compiler could not keep in registers: cuobjdump -res-usage); and on
approximate float32 arithmetic in the PTX (``div.full.f32``, what ``/`` lowers to; see
noisefast/triton/rounding.py). Exit status 1 on any failure; a table of registers per kernel is
printed.
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import importlib
import inspect
import json
import multiprocessing
import os
import pkgutil
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARCH = 90

# Approximate float32 arithmetic that Triton emits for plain operators; the kernels must use the
# correctly rounded forms (tl.div_rn, tl.sqrt_rn) so that compiled results equal the interpreter's.
APPROXIMATE = re.compile(r"\b(div\.full\.f32|div\.approx(?:\.ftz)?\.f32|sqrt\.approx(?:\.ftz)?\.f32)\b")


def _setup_imports(triton_path):
    """Triton from ``triton_path`` (when given) and noisefast from this tree, compiled mode."""
    os.environ.pop("TRITON_INTERPRET", None)  # before noisefast defines its kernels
    for path in (ROOT, triton_path):
        if path:
            sys.path.insert(0, path)


# ---- the inputs that steer the launchers ------------------------------------------------------------

def launcher_calls():
    """(launcher path, thunk) for every input regime; the thunks call the real launchers on meta
    tensors. Every dtype meets every combination of a launcher's branches at one typical size; the
    size regimes (tile shapes, loop lengths, WIDE, search depths) are crossed with float32 and
    float64 (the dtypes with the most registers per element); 64-bit element counts with float32."""
    import torch

    from noisefast.triton import (consistency_output, gaussian_noise, mix_rows, perturbation, pseudo_huber,
                                  randn)

    floats = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    widest = (torch.float32, torch.float64)
    big = 2 ** 31 + 8  # an element count past int32: the launchers' integers become i64

    def meta(*shape, dtype=torch.float32):
        return torch.empty(shape, dtype=dtype, device="meta")

    seed = meta(1, dtype=torch.int64)
    calls = []

    def add(path, fn, *args):
        calls.append((path, lambda: fn(*args)))

    # randn: stream 0 at offset 0; stream 1 (Triton turns an integer 1 into a constant) at an
    # unaligned offset; 64-bit streams, offsets and lengths.
    randn_path = "noisefast.triton.randn:randn_out"
    for dtype in floats:
        add(randn_path, randn.randn_out, meta(4096, dtype=dtype), seed, 0, 0)
    for n, stream, offset in ((1001, 1, 3), (1000, 3, 2 ** 33 + 1), (big, 2 ** 40, 0)):
        add(randn_path, randn.randn_out, meta(n), seed, stream, offset)
    for rows, stream, first_block in ((100, 0, 0), (37, 2 ** 40, 2 ** 33)):
        add("noisefast.triton.randn:philox_words_out", randn.philox_words_out,
            meta(rows, 4, dtype=torch.int64), seed, stream, first_block)

    # gaussian_noise: a number std, and a per-channel std tensor (HAS_SCALE); per-sample and big;
    # the mapped stream positions of a DTensor shard (MAPPED: Shard(1), 64-bit offsets).
    noise_path = "noisefast.triton.gaussian_noise:gaussian_noise"
    for dtype in floats:
        x = meta(8, 3, 32, 32, dtype=dtype)
        add(noise_path, gaussian_noise.gaussian_noise, x, seed, 0.1, None, 1, 0, 1, 1)
        add(noise_path, gaussian_noise.gaussian_noise, x, seed, 1.0, meta(3, dtype=dtype), 1024, 0, 1, 1)
        add(noise_path, gaussian_noise.gaussian_noise, x, seed, 0.1, None, 1, 3 * 1024, 3 * 1024, 6 * 1024)
    add(noise_path, gaussian_noise.gaussian_noise, meta(8, 3, 32, 32), seed, 1.0, meta(8), 3 * 1024, 0, 1, 1)
    add(noise_path, gaussian_noise.gaussian_noise, meta(big), seed, 0.1, None, 1, 0, 1, 1)
    add(noise_path, gaussian_noise.gaussian_noise, meta(big), seed, 0.1, None, 1, 2 ** 40 + 1, 1, 1)

    # consistency_pair: narrow samples (several per program) and WIDE ones (>= a program's
    # elements), per-sample and batch-wide levels.
    def pair(x, per_sample):
        count = x.shape[0] if per_sample else 1
        sigma = meta(count, dtype=x.dtype)
        add("noisefast.triton.perturbation:consistency_pair", perturbation.consistency_pair,
            x, seed, sigma, sigma, x.numel() // count, 0)

    for dtype in floats:
        pair(meta(8, 3, 5, 5, dtype=dtype), True)
        pair(meta(4, 3, 32, 32, dtype=dtype), True)
    pair(meta(4, 3, 32, 32), False)
    pair(meta(2, big // 2), True)

    # add_noise: input perturbation x offset noise, on wide samples with narrow channel rows; the
    # other size regimes (narrow samples, wide rows) with everything on.
    def noisy(x, gamma, offset_noise):
        batch, channels = x.shape[0], x.shape[1]
        per = meta(batch, dtype=x.dtype)
        add("noisefast.triton.perturbation:add_noise", perturbation.add_noise, x, seed, per, per, gamma,
            offset_noise, x.numel() // batch, x.numel() // (batch * channels), 0)

    for dtype in floats:
        for gamma in (0.0, 0.1):
            for offset_noise in (0.0, 0.1):
                noisy(meta(2, 64, 4, 4, dtype=dtype), gamma, offset_noise)
    for dtype in widest:
        noisy(meta(8, 3, 5, 5, dtype=dtype), 0.1, 0.1)
        noisy(meta(2, 4, 32, 32, dtype=dtype), 0.1, 0.1)
    noisy(meta(2, 2, big // 4), 0.1, 0.1)

    # perturbation_noise_grad (the gradient to sigma): one and two grads with every noise branch on
    # wide samples (chunks of 256 blocks) with narrow offset rows; the other program sizes (a whole
    # sample per program: 16 to 128 blocks) and wide offset rows with everything on; 64-bit counts.
    def noise_grad(x, grads, gamma, offset_noise):
        batch, channels = x.shape[0], x.shape[1]
        g = meta(x.numel(), dtype=x.dtype)
        add("noisefast.triton.perturbation:perturbation_noise_grad", perturbation.perturbation_noise_grad,
            [g] * grads, seed, gamma, offset_noise, batch, x.numel() // batch, x.numel() // (batch * channels), 0)

    for dtype in floats:
        for grads in (1, 2):
            for gamma in (0.0, 0.1):
                for offset_noise in (0.0, 0.1):
                    noise_grad(meta(2, 64, 4, 4, dtype=dtype), grads, gamma, offset_noise)
    for dtype in widest:
        for shape in ((16, 1, 1, 1), (8, 3, 5, 5), (4, 3, 8, 10), (4, 3, 10, 10), (2, 2, 40, 40)):
            noise_grad(meta(*shape, dtype=dtype), 2, 0.1, 0.1)
    noise_grad(meta(2, 2, big // 4), 2, 0.1, 0.1)

    # The sampled pair: narrow and wide samples over the iCT curriculum's largest table (1281
    # levels); the other search depths (2 and 11 levels).
    def sampled(x, levels):
        add("noisefast.triton.perturbation:sampled_consistency_pair", perturbation.sampled_consistency_pair,
            x, seed, meta(levels, dtype=torch.float64), meta(levels - 1, dtype=torch.float64), 0)

    for dtype in floats:
        sampled(meta(64, 3, 4, 4, dtype=dtype), 1281)
        sampled(meta(4, 3, 32, 32, dtype=dtype), 1281)
    for levels in (2, 11):
        sampled(meta(64, 3, 4, 4), levels)

    # mix_rows: image rows (several programs per row); rows of one element, of 100, of a tile.
    index = meta(64, dtype=torch.int64)
    lam = meta(dtype=torch.float64)
    for dtype in floats:
        add("noisefast.triton.mix_rows:mix_rows", mix_rows.mix_rows, meta(64, 3, 32, 32, dtype=dtype), index, lam)
    for dtype in widest:
        for cols in (1, 100, 1024):
            add("noisefast.triton.mix_rows:mix_rows", mix_rows.mix_rows, meta(64, cols, dtype=dtype), index, lam)

    # Per-sample reductions (pseudo-Huber, consistency_output): every branch on wide samples cut
    # into chunks; the other tilings (narrow samples packed several to a program, one chunk that
    # finishes alone, 64-iteration loops) with float32 and float64.
    def reductions(x, every_branch):
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        batch = x.shape[0]
        loss = meta(batch, dtype=acc)
        for per_sample in (True, False):
            add("noisefast.triton.pseudo_huber:pseudo_huber_forward", pseudo_huber.pseudo_huber_forward,
                x, x, 0.03, per_sample)
            for want in (((True, False), (False, True), (True, True)) if every_branch else ((True, True),)):
                add("noisefast.triton.pseudo_huber:pseudo_huber_backward", pseudo_huber.pseudo_huber_backward,
                    loss, x, x, loss, 0.03, per_sample, *want)
        for count in ((batch, 1) if every_branch else (batch,)):
            sigma = meta(count, dtype=acc)
            add("noisefast.triton.consistency_output:consistency_output_forward",
                consistency_output.consistency_output_forward, x, x, sigma, 0.5, 0.002)
            wants = ((True, True, False), (True, True, True), (False, False, True), (True, False, False))
            for want in (wants if every_branch else wants[1:2]):
                add("noisefast.triton.consistency_output:consistency_output_backward",
                    consistency_output.consistency_output_backward, x, x, x, sigma, 0.5, 0.002, *want)

    for dtype in floats:
        reductions(meta(64, 3000, dtype=dtype), every_branch=True)
    for dtype in widest:
        for batch, d in ((64, 3), (64, 100), (1024, 1024), (1, 2 ** 27)):
            reductions(meta(batch, d, dtype=dtype), every_branch=False)
    return calls


# ---- recording launches and turning them into compile jobs -----------------------------------------------

class Variant:
    """One compile job: a kernel with the signature, constexprs and attributes of a launch."""

    def __init__(self, fn, signature, constexprs, attrs, options):
        self.fn = fn
        self.signature = signature
        self.constexprs = constexprs
        self.attrs = attrs
        self.options = options
        self.kernel = f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__name__}"
        names = fn.arg_names
        consts = {names[path[0]]: value for path, value in constexprs.items() if len(path) == 1}
        self.named_constexprs = consts
        pointers = [f"{k}={v[1:]}" for k, v in signature.items() if v.startswith("*")]
        wide = [k for k, v in signature.items() if v in ("i64", "u64")]
        parts = pointers + ([f"i64:{','.join(wide)}"] if wide else [])
        parts += [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in consts.items() if k.isupper()]
        ones = [k for k, v in consts.items() if not k.isupper()]
        if ones:
            parts.append(f"=1:{','.join(ones)}")
        self.label = " ".join(parts)
        self.key = (self.kernel, repr(sorted(signature.items())), repr(sorted(constexprs.items(), key=str)),
                    repr(sorted(attrs.items())), repr(sorted(options.items())))


def record_variants():
    """Run every launcher call with kernel launches intercepted; returns (variants, coverage errors)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", ARCH, 32))
    launches = []
    called = set()

    def intercepted_run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))

    original_run = JITFunction.run
    JITFunction.run = intercepted_run
    errors = []
    try:
        for path, thunk in launcher_calls():
            called.add(path)
            before = len(launches)
            try:
                thunk()
            except Exception as exc:  # a launcher that raises is a failure of its own
                errors.append(f"{path}: the launcher raised {type(exc).__name__}: {exc}")
            if len(launches) == before:
                errors.append(f"{path}: a call launched no kernel")
    finally:
        JITFunction.run = original_run

    variants = {}
    for fn, args, kwargs in launches:
        kwargs = dict(kwargs)
        kwargs["debug"] = kwargs.get("debug", fn.debug) or False
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
        variant = Variant(fn, signature, constexprs, attrs, dict(options.__dict__))
        variants.setdefault(variant.key, variant)
    errors += coverage_errors(called, list(variants.values()))
    return list(variants.values()), errors


def coverage_errors(called, variants):
    """What the calls above failed to reach: a Triton launcher named by an op's ``Kernels`` table,
    a kernel launched in noisefast/triton, or one value of a boolean constexpr."""
    import noisefast.ops
    import noisefast.triton
    from noisefast._library import Kernels
    from triton.runtime.jit import JITFunction

    errors = []
    launchers = set()
    for info in pkgutil.iter_modules(noisefast.ops.__path__):
        module = importlib.import_module(f"noisefast.ops.{info.name}")
        for value in vars(module).values():
            if isinstance(value, Kernels) and value.modules["triton"]:
                launchers.add(f"{value.modules['triton']}:{value.name}")
    for path in sorted(launchers - called):
        errors.append(f"{path}: no call in tests/triton_aot.py exercises this launcher")

    seen = collections.defaultdict(lambda: collections.defaultdict(set))
    for v in variants:
        for name, value in v.named_constexprs.items():
            seen[(v.fn.__module__, v.fn.__name__)][name].add(value)
    for info in pkgutil.iter_modules(noisefast.triton.__path__):
        module = importlib.import_module(f"noisefast.triton.{info.name}")
        source = inspect.getsource(module)
        for name, value in vars(module).items():
            if not isinstance(value, JITFunction) or value.__module__ != module.__name__:
                continue
            if not re.search(rf"\b{re.escape(name)}\[", source):
                continue  # a helper, not a launched kernel
            values = seen.get((module.__name__, name))
            if values is None:
                errors.append(f"{module.__name__}.{name}: launched in its module, but no call reached it")
                continue
            for param in value.params:
                if param.is_constexpr and param.name in values:
                    got = values[param.name]
                    if got <= {True, False} and got != {True, False}:
                        errors.append(f"{module.__name__}.{name}: constexpr {param.name} only seen as {got}")
    return errors


# ---- compiling ---------------------------------------------------------------------------------------

_VARIANTS = []  # the jobs, inherited by forked workers


def compile_one(index):
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import ASTSource

    import resource_usage

    v = _VARIANTS[index]
    start = time.perf_counter()
    result = {"kernel": v.kernel, "variant": v.label}
    try:
        compiled = triton.compile(ASTSource(v.fn, v.signature, v.constexprs, v.attrs),
                                  target=GPUTarget("cuda", ARCH, 32), options=v.options)
    except Exception as exc:
        result.update(error=_describe(exc), seconds=time.perf_counter() - start)
        return result
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        usage = resource_usage.read(f.name, resource_usage.cuobjdump(triton))
    finally:
        os.unlink(f.name)
    (symbol, use), = usage.items()
    result.update(registers=use.registers, stack=use.stack, local=use.local, num_warps=compiled.metadata.num_warps,
                  approximate=sorted(set(APPROXIMATE.findall(compiled.asm["ptx"]))),
                  seconds=time.perf_counter() - start)
    return result


def _describe(exc):
    """The compile error and, for errors raised inside a called @jit function, the innermost cause
    (Triton's message points at the call site in the kernel; the cause says what went wrong)."""
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        nxt = chain[-1].__cause__ or chain[-1].__context__
        if nxt in chain or len(chain) > 8:
            break
        chain.append(nxt)
    text = str(exc).strip()
    if len(chain) > 1:
        text += f"\ncaused by {type(chain[-1]).__name__}: {str(chain[-1]).strip()}"
    return f"{type(exc).__name__}: {text[-1500:]}"


def problems(result):
    if "error" in result:
        return ["compile error"]
    found = []
    if result["stack"] or result["local"]:
        found.append(f"stack frame {result['stack']} B, local memory {result['local']} B per thread (spills)")
    if result["approximate"]:
        found.append("approximate float32 arithmetic: " + ", ".join(result["approximate"]))
    return found


def report(results, errors, version, seconds):
    lines = [f"Triton {version}, sm_{ARCH}: {len(results)} kernel variants compiled in {seconds:.1f} s"]
    by_kernel = collections.defaultdict(list)
    for r in results:
        by_kernel[r["kernel"]].append(r)
    lines.append(f"  {'kernel':<42} {'variants':>8} {'registers':>10} {'warps':>6} {'failed':>7}")
    for kernel in sorted(by_kernel):
        rs = by_kernel[kernel]
        regs = [r["registers"] for r in rs if "registers" in r]
        warps = sorted({r["num_warps"] for r in rs if "num_warps" in r})
        span = f"{min(regs)}-{max(regs)}" if regs else "-"
        failed = sum(1 for r in rs if problems(r))
        lines.append(f"  {kernel:<42} {len(rs):>8} {span:>10} {','.join(map(str, warps)):>6} {failed:>7}")
    bad = [r for r in results if problems(r)]
    for r in bad:
        lines.append(f"FAIL {r['kernel']} [{r['variant']}]: {'; '.join(problems(r))}")
        if "error" in r:
            lines.append("    " + r["error"].replace("\n", "\n    "))
    for e in errors:
        lines.append(f"FAIL coverage: {e}")
    lines.append(f"{len(bad)} failed variants, {len(errors)} coverage errors")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triton-path", help="a directory holding another Triton (put first on sys.path)")
    parser.add_argument("--json", help="write every variant's result here")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    _setup_imports(args.triton_path)
    import triton

    start = time.perf_counter()
    variants, errors = record_variants()
    _VARIANTS[:] = variants
    if args.jobs > 1:
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            results = list(pool.map(compile_one, range(len(variants))))
    else:
        results = [compile_one(i) for i in range(len(variants))]
    seconds = time.perf_counter() - start
    print(report(results, errors, triton.__version__, seconds))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "triton_file": triton.__file__, "arch": ARCH,
                       "seconds": seconds, "results": results, "coverage_errors": errors}, f, indent=1)
    return 1 if errors or any(problems(r) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
