"""Build noisefast._C: the C++ CPU kernels always, the CUDA kernels when they can be built.

Environment switches (all optional):
  NOISEFAST_NO_EXTENSION=1   build nothing; noisefast then runs its reference and Triton kernels.
  NOISEFAST_NO_CUDA=1        build the CPU kernels only, even with a CUDA toolchain present.
  CUDA_HOME                  defaults to /usr/local/cuda when that exists (torch's own guess,
                             /usr/local, is wrong on many machines).
  TORCH_CUDA_ARCH_LIST       defaults to "9.0" when no GPU is visible (torch's detection fails then).
  MAX_JOBS                   parallel compile jobs (defaults to the number of cores).
  NOISEFAST_DEBUG=1          keep debug symbols (-g); the default -g0 halves build time.
"""
import glob
import os
import shutil
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0").strip().lower() not in ("", "0", "false", "no", "off")


def _default_cuda_env():
    if "CUDA_HOME" not in os.environ and os.path.isdir("/usr/local/cuda"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))


def _cuda_toolchain_reason(torch):
    """None when CUDA kernels can be built, else why not (printed in the build log)."""
    if _flag("NOISEFAST_NO_CUDA"):
        return "NOISEFAST_NO_CUDA is set"
    if torch.version.cuda is None:
        return "torch is a CPU-only build (its wheel has no CUDA headers)"
    cuda_home = os.environ.get("CUDA_HOME")
    nvcc = os.path.join(cuda_home, "bin", "nvcc") if cuda_home else shutil.which("nvcc")
    if not nvcc or not os.path.exists(nvcc):
        return "nvcc was not found (set CUDA_HOME)"
    return None


def _extensions():
    if _flag("NOISEFAST_NO_EXTENSION"):
        print("noisefast: NOISEFAST_NO_EXTENSION is set; building no C++ extension", file=sys.stderr)
        return [], {}
    _default_cuda_env()
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    debug = _flag("NOISEFAST_DEBUG")
    level = ["-g"] if debug else ["-g0", "-O3"]
    # No -std: torch.utils.cpp_extension picks the standard its headers need (C++20 for torch 2.14).
    # -fopenmp: ATen's at::parallel_for is header code that runs serially unless the extension
    # itself is compiled with OpenMP (torch ships libgomp.so.1; linking against the same soname
    # reuses the runtime torch has loaded, so there is one thread pool).
    # -fno-math-errno, -fno-trapping-math: loops calling sqrt or selecting with float compares
    # vectorise (IEEE results are unchanged; only errno and FP-exception flags are given up).
    cxx_flags = level + ["-fvisibility=hidden", "-fno-math-errno", "-fno-trapping-math", "-fopenmp"]
    link_flags = ["-fopenmp"]
    # csrc/include: the headers shared by CPU and CUDA code ("noisefast/philox.h"); csrc: what an op's
    # torch-facing file includes from the device folders ("cpu/randn_cpu.h", "cuda/randn_launcher.h").
    include_dirs = [os.path.join(HERE, "csrc", "include"), os.path.join(HERE, "csrc")]
    # One translation unit per op (csrc/ops/<op>.cpp: checks, CPU kernels, registrations), compiled
    # with NOISEFAST_WITH_CUDA=1 in a CUDA build; the CUDA kernels are separate .cu units.
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/ops/*.cpp"))

    why_not_cuda = _cuda_toolchain_reason(torch)
    if why_not_cuda is None:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        print(f"noisefast: building CPU and CUDA kernels (arch {os.environ.get('TORCH_CUDA_ARCH_LIST', 'auto')})",
              file=sys.stderr)
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        ext = CUDAExtension(
            "noisefast._C",
            sources,
            include_dirs=include_dirs,
            define_macros=[("NOISEFAST_WITH_CUDA", "1")],
            extra_link_args=link_flags,
            extra_compile_args={
                "cxx": cxx_flags,
                # nvcc emits no debug info unless asked (and rejects -g0).
                "nvcc": ["-O3", "--expt-relaxed-constexpr"] + (["-lineinfo"] if debug else ["-DNDEBUG"]),
            },
        )
    else:
        print(f"noisefast: building CPU kernels only: {why_not_cuda}", file=sys.stderr)
        ext = CppExtension("noisefast._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None
                                                             or _has_ninja_module())}


def _has_ninja_module():
    try:
        import ninja  # noqa: F401
        return True
    except ImportError:
        return False


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
