// noisefast_C::randn_out: fills a tensor with elements offset .. offset+numel-1 of the portable
// normal stream (and philox_words_out, its raw words). The schemas are defined here, next to the kernel that always exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "noisefast/torch_checks.h"
#include "normal_stream_cpu.h"
#include "outputs_cpu.h"

namespace noisefast {
namespace {

void randn_out_cpu(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "noisefast: randn_out needs a contiguous output");
  check_nonnegative(stream, "stream");
  check_nonnegative(offset, "offset");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  cpu::advise_huge_pages(out);  // before the kernel's first touch of out's pages
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "randn_out_cpu", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    cpu::for_each_normal_chunk(out.numel(), seed_value, static_cast<uint64_t>(stream),
                               static_cast<uint64_t>(offset), [data](int64_t i0, int64_t count, const float* z) {
                                 scalar_t* dst = data + i0;
                                 for (int64_t t = 0; t < count; ++t) dst[t] = static_cast<scalar_t>(z[t]);
                               });
  });
}

// The raw Philox words of blocks first_block .. first_block + rows - 1 as int64 [rows, 4]: lets the
// tests compare backends bit for bit, below the float transform.
void philox_words_out_cpu(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t first_block) {
  TORCH_CHECK(out.is_contiguous() && out.scalar_type() == at::kLong && out.dim() == 2 && out.size(1) == 4,
              "noisefast: philox_words_out needs a contiguous int64 [rows, 4] output");
  check_nonnegative(first_block, "first_block");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  int64_t* data = out.data_ptr<int64_t>();
  at::parallel_for(0, out.size(0), cpu::kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const PhiloxWords w = philox_block(seed_value, static_cast<uint64_t>(stream),
                                         static_cast<uint64_t>(first_block + r));
      for (int lane = 0; lane < 4; ++lane) data[4 * r + lane] = static_cast<int64_t>(w.w[lane]);
    }
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("randn_out(Tensor(a!) out, Tensor seed, int stream, int offset) -> ()");
  m.def("philox_words_out(Tensor(a!) out, Tensor seed, int stream, int first_block) -> ()");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("randn_out", &randn_out_cpu);
  m.impl("philox_words_out", &philox_words_out_cpu);
}

}  // namespace noisefast
