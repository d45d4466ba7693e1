// CPU kernels of the randn ops: the portable normal stream (philox.h) written to memory, and its raw
// Philox words. Called by csrc/ops/randn.cpp, which checks the arguments.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstdint>

#include "noisefast/philox.h"
#include "normal_stream_cpu.h"
#include "outputs_cpu.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/randn.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// out (contiguous, any float dtype) = elements offset .. offset + numel - 1 of normal stream `stream`.
inline void randn(at::Tensor& out, uint64_t seed, uint64_t stream, uint64_t offset) {
  advise_huge_pages(out);  // before the kernel's first touch of out's pages
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "randn_cpu", [&] {
    scalar_t* data = out.data_ptr<scalar_t>();
    for_each_normal_chunk(out.numel(), seed, stream, offset, [data](int64_t i0, int64_t count, const float* z) {
      scalar_t* dst = data + i0;
      for (int64_t t = 0; t < count; ++t) dst[t] = static_cast<scalar_t>(z[t]);
    });
  });
}

// out (contiguous int64 [rows, 4]) = the Philox words of blocks first_block .. first_block + rows - 1.
inline void philox_words(at::Tensor& out, uint64_t seed, uint64_t stream, uint64_t first_block) {
  int64_t* data = out.data_ptr<int64_t>();
  at::parallel_for(0, out.size(0), kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const PhiloxWords w = philox_block(seed, stream, first_block + static_cast<uint64_t>(r));
      for (int lane = 0; lane < 4; ++lane) data[4 * r + lane] = static_cast<int64_t>(w.w[lane]);
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
