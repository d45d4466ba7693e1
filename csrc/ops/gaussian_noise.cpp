// CUDA registration of noisefast_C::gaussian_noise (schema in csrc/cpu/gaussian_noise_cpu.cpp).
#include <torch/library.h>

#include <optional>

#include "cuda_glue.h"
#include "launchers.h"
#include "noisefast/torch_checks.h"

namespace noisefast {
namespace {

at::Tensor gaussian_noise_cuda(const at::Tensor& x_in, const at::Tensor& seed, double std,
                               const std::optional<at::Tensor>& scale_in, int64_t inner) {
  check_seed_on(seed, x_in);
  TORCH_CHECK(inner >= 1, "noisefast: inner must be >= 1, got ", inner);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
  at::Tensor scale;
  if (scale_in.has_value()) {
    TORCH_CHECK(scale_in->device() == x.device(), "noisefast: std is on ", scale_in->device(),
                " but x is on ", x.device());
    scale = scale_in->to(cuda::opmath_dtype(x.scalar_type())).contiguous();
    TORCH_CHECK(scale.numel() >= 1, "noisefast: the std tensor is empty");
  }
  cuda::check_launch(
      cuda::launch_gaussian_noise(x.data_ptr(), out.data_ptr(), dtype_of(x), x.numel(),
                                  seed.data_ptr<int64_t>(), std, scale.defined() ? scale.data_ptr() : nullptr,
                                  scale.defined() ? scale.numel() : 1, inner, cuda::current_stream()),
      "gaussian_noise");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) { m.impl("gaussian_noise", &gaussian_noise_cuda); }

}  // namespace noisefast
