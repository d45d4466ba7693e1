// CPU kernel of foreach_gaussian_noise_ / foreach_gaussian_noise: dst[i] = src[i] + std_i * z_i over
// a list of tensors (csrc/include/noisefast/foreach_gaussian_noise.h for the operands and the stream
// layout; the per-element maths is csrc/include/noisefast/gaussian_noise.h, the one gaussian_noise
// uses). Called by csrc/ops/foreach_gaussian_noise.cpp, which checks and lays out the operands.
//
// Parallel scheme: the tensors' stream slices, laid end to end, form one range of Philox blocks
// that for_each_normal_chunk (normal_stream_cpu.h) splits over the threads; each chunk of normals
// is applied to the tensors it overlaps. One parallel pass whatever the dtypes and sizes.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "noisefast/foreach_gaussian_noise.h"
#include "noisefast/gaussian_noise.h"
#include "noisefast/math_type.h"
#include "noisefast/streams.h"
#include "normal_stream_cpu.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/foreach_gaussian_noise.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// Elements [from, from + count) of one tensor with normals z[0 .. count).
template <typename scalar_t>
void foreach_gaussian_noise_span(const void* src_ptr, void* dst_ptr, int64_t from, int64_t count, double std,
                                 const float* z) {
  using acc_t = math_t<scalar_t>;
  const scalar_t* src = static_cast<const scalar_t*>(src_ptr) + from;
  scalar_t* dst = static_cast<scalar_t*>(dst_ptr) + from;
  const acc_t sigma = static_cast<acc_t>(std);
  if (sigma == acc_t(0)) {  // untouched, bit for bit (x + 0 * z would turn -0.0 into +0.0)
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(scalar_t));
    return;
  }
  for (int64_t k = 0; k < count; ++k) {
    dst[k] = static_cast<scalar_t>(add_scaled_normal<acc_t>(static_cast<acc_t>(src[k]), sigma, z[k]));
  }
}

using ForeachGaussianNoiseSpanFn = void (*)(const void*, void*, int64_t, int64_t, double, const float*);

inline ForeachGaussianNoiseSpanFn foreach_gaussian_noise_span_fn(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return &foreach_gaussian_noise_span<float>;
    case DType::kFloat16: return &foreach_gaussian_noise_span<c10::Half>;
    case DType::kBFloat16: return &foreach_gaussian_noise_span<c10::BFloat16>;
    case DType::kFloat64: return &foreach_gaussian_noise_span<double>;
  }
  TORCH_CHECK(false, "noisefast: unsupported dtype in foreach_gaussian_noise");
}

// Every tensor of `ops` (stds on the host), the normals drawn under `seed`.
inline void foreach_gaussian_noise(const ForeachGaussianNoiseOperands& ops, uint64_t seed) {
  const int64_t n = ops.num_tensors;
  std::vector<ForeachGaussianNoiseSpanFn> fns(n);
  for (int64_t i = 0; i < n; ++i) fns[i] = foreach_gaussian_noise_span_fn(static_cast<DType>(ops.dtypes[i]));
  const uint64_t* bases = ops.bases;
  const int64_t total = static_cast<int64_t>(bases[n - 1] + stream_span(ops.numels[n - 1]));
  for_each_normal_chunk(total, seed, kStreamNoise, 0, [&](int64_t i0, int64_t count, const float* z) {
    const uint64_t begin = static_cast<uint64_t>(i0), end = begin + static_cast<uint64_t>(count);
    int64_t t = std::upper_bound(bases, bases + n, begin) - bases - 1;
    for (; t < n && bases[t] < end; ++t) {
      const uint64_t from = std::max(begin, bases[t]);
      const uint64_t to = std::min(end, bases[t] + static_cast<uint64_t>(ops.numels[t]));
      if (to <= from) continue;  // this chunk holds only the padding of tensor t's last block
      fns[t](ops.src[t], ops.dst[t], static_cast<int64_t>(from - bases[t]), static_cast<int64_t>(to - from),
             ops.stds[t], z + (from - begin));
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
