// CUDA registration of noisefast_C::randn_out (schema in csrc/cpu/randn_cpu.cpp).
#include <torch/library.h>

#include "cuda_glue.h"
#include "launchers.h"
#include "noisefast/torch_checks.h"

namespace noisefast {
namespace {

void randn_out_cuda(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "noisefast: randn_out needs a contiguous output");
  check_seed_on(seed, out);
  check_nonnegative(stream, "stream");
  check_nonnegative(offset, "offset");
  const c10::cuda::CUDAGuard guard(out.device());
  cuda::check_launch(cuda::launch_randn(out.data_ptr(), dtype_of(out), out.numel(), seed.data_ptr<int64_t>(),
                                        static_cast<uint64_t>(stream), static_cast<uint64_t>(offset),
                                        cuda::current_stream()),
                     "randn");
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) { m.impl("randn_out", &randn_out_cuda); }

}  // namespace noisefast
