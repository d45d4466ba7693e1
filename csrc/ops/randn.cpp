// Torch-facing C++ of noisefast_C::randn_out and philox_words_out (schemas: noisefast/ops/randn.py):
// argument checks and the registrations of the CPU kernels (csrc/cpu/randn_cpu.h) and the CUDA
// kernel (csrc/cuda/randn.cu; philox_words_out, a test aid, has none).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/randn_cpu.h"
#include "torch_checks.h"
#if NOISEFAST_WITH_CUDA
#include "cuda/randn_launcher.h"
#include "cuda_glue.h"
#endif

namespace noisefast {
namespace {

// stream is any 64-bit stream number: the schema's int64 carries its bits (streams >= 2^63 arrive
// negative), and the kernels take them as uint64.
void check_randn_out(const at::Tensor& out, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "noisefast: randn_out needs a contiguous output");
  check_nonnegative(offset, "offset");
}

void randn_out_cpu(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t offset) {
  check_randn_out(out, offset);
  cpu::randn(out, read_seed_on_cpu(seed), static_cast<uint64_t>(stream), static_cast<uint64_t>(offset));
}

// The raw Philox words of blocks first_block .. first_block + rows - 1 as int64 [rows, 4]: lets the
// tests compare backends bit for bit, below the float transform.
void philox_words_out_cpu(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t first_block) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kLong && out.dim() == 2 && out.size(1) == 4,
              "noisefast: philox_words_out needs a contiguous int64 [rows, 4] output");
  check_nonnegative(first_block, "first_block");
  cpu::philox_words(out, read_seed_on_cpu(seed), static_cast<uint64_t>(stream), static_cast<uint64_t>(first_block));
}

#if NOISEFAST_WITH_CUDA
void randn_out_cuda(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t offset) {
  check_randn_out(out, offset);
  check_seed_on(seed, out);
  const c10::cuda::CUDAGuard guard(out.device());
  cuda::check_launch(cuda::launch_randn(out.data_ptr(), dtype_of(out), out.numel(), seed.data_ptr<int64_t>(),
                                        static_cast<uint64_t>(stream), static_cast<uint64_t>(offset),
                                        cuda::current_stream()),
                     "randn");
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("randn_out", &randn_out_cpu);
  m.impl("philox_words_out", &philox_words_out_cpu);
}

#if NOISEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) { m.impl("randn_out", &randn_out_cuda); }
#endif

}  // namespace noisefast
