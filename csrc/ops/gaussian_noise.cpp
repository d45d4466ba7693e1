// Torch-facing C++ of noisefast_C::gaussian_noise (schema: noisefast/ops/gaussian_noise.py):
// argument checks, the output, and the registrations of the CPU kernel
// (csrc/cpu/gaussian_noise_cpu.h) and the CUDA kernel (csrc/cuda/gaussian_noise.cu).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "cpu/gaussian_noise_cpu.h"
#include "cpu/outputs_cpu.h"
#include "torch_checks.h"
#if NOISEFAST_WITH_CUDA
#include "cuda/gaussian_noise_launcher.h"
#include "cuda_glue.h"
#endif

namespace noisefast {
namespace {

void check_inner(int64_t inner) { TORCH_CHECK(inner >= 1, "noisefast: inner must be >= 1, got ", inner); }

// The per-position scale as the kernels take it: contiguous, in the math type of x, on x's device;
// undefined when there is none.
at::Tensor scale_operand(const std::optional<at::Tensor>& scale, const at::Tensor& x) {
  if (!scale.has_value()) return at::Tensor();
  TORCH_CHECK(scale->device() == x.device(), "noisefast: std is on ", scale->device(), " but x is on ", x.device());
  at::Tensor s = scale->to(math_scalar_type(x.scalar_type())).contiguous();
  TORCH_CHECK(s.numel() >= 1 || x.numel() == 0, "noisefast: the std tensor is empty");  // empty x: nothing is read
  return s;
}

at::Tensor gaussian_noise_cpu(const at::Tensor& x_in, const at::Tensor& seed, double std,
                              const std::optional<at::Tensor>& scale, int64_t inner, int64_t offset,
                              int64_t segment, int64_t stride) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  check_inner(inner);
  const StreamMap map = stream_map(offset, segment, stride);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = cpu::new_output_like(x);
  cpu::gaussian_noise(x, out, seed_value, std, scale_operand(scale, x), inner, map);
  return out;
}

#if NOISEFAST_WITH_CUDA
at::Tensor gaussian_noise_cuda(const at::Tensor& x_in, const at::Tensor& seed, double std,
                               const std::optional<at::Tensor>& scale_in, int64_t inner, int64_t offset,
                               int64_t segment, int64_t stride) {
  check_seed_on(seed, x_in);
  check_inner(inner);
  const StreamMap map = stream_map(offset, segment, stride);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor scale = scale_operand(scale_in, x);
  cuda::check_launch(
      cuda::launch_gaussian_noise(x.data_ptr(), out.data_ptr(), dtype_of(x), x.numel(),
                                  seed.data_ptr<int64_t>(), std, scale.defined() ? scale.data_ptr() : nullptr,
                                  scale.defined() ? scale.numel() : 1, inner, map, cuda::current_stream()),
      "gaussian_noise");
  return out;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) { m.impl("gaussian_noise", &gaussian_noise_cpu); }

#if NOISEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) { m.impl("gaussian_noise", &gaussian_noise_cuda); }
#endif

}  // namespace noisefast
