// noisefast_C::randn_out: fills a tensor with elements offset .. offset+numel-1 of the portable
// normal stream. The schema is defined here, next to the kernel that always exists.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "noisefast/torch_checks.h"
#include "normal_stream_cpu.h"

namespace noisefast {
namespace {

void randn_out_cpu(at::Tensor& out, const at::Tensor& seed, int64_t stream, int64_t offset) {
  TORCH_CHECK(out.is_contiguous(), "noisefast: randn_out needs a contiguous output");
  check_nonnegative(stream, "stream");
  check_nonnegative(offset, "offset");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "randn_out_cpu", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    cpu::for_each_normal(out.numel(), seed_value, static_cast<uint64_t>(stream),
                         static_cast<uint64_t>(offset),
                         [data](int64_t i, float z) { data[i] = static_cast<scalar_t>(z); });
  });
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("randn_out(Tensor(a!) out, Tensor seed, int stream, int offset) -> ()");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) { m.impl("randn_out", &randn_out_cpu); }

}  // namespace noisefast
