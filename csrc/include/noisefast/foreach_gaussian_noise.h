// Operands of the multi-tensor noise kernels (noisefast_C::foreach_gaussian_noise_ and
// foreach_gaussian_noise), as raw pointers: the CPU kernel (csrc/cpu/foreach_gaussian_noise_cpu.h)
// and the CUDA launcher (csrc/cuda/foreach_gaussian_noise.cu, which must not see torch headers) take
// the same struct, built by csrc/ops/foreach_gaussian_noise.cpp.
//
// For every tensor i: dst[i][j] = src[i][j] + std_i * z[bases[i] + j], j < numels[i], z the normal
// stream kStreamNoise under the call's seed (src[i] == dst[i] in place). std_i is stds[i], or the
// one value at std_device when that is set. bases[i] is a multiple of 4, so each Philox block
// feeds one tensor only. A tensor with std_i == 0 is left as it is (copied when src != dst): not
// even -0.0 becomes +0.0.
#pragma once

#include <stdint.h>

#include "noisefast/dtype.h"

namespace noisefast {

struct ForeachGaussianNoiseOperands {
  int64_t num_tensors = 0;          // tensors listed below: all non-empty, contiguous
  const void* const* src = nullptr;
  void* const* dst = nullptr;
  const int64_t* numels = nullptr;
  const uint8_t* dtypes = nullptr;   // DType values, one byte each (multi_tensor_apply's tags)
  const uint64_t* bases = nullptr;  // first stream element of each tensor
  const double* stds = nullptr;     // one per tensor; null when std_device is set
  const void* std_device = nullptr; // a 0-d float32/float64 std in the tensors' device memory
  bool std_device_is_double = false;
  const int64_t* seed_device = nullptr; // CUDA kernel: the seed in device memory
};

// Stream elements each tensor occupies: its size rounded up to whole Philox blocks.
inline uint64_t stream_span(int64_t numel) { return (static_cast<uint64_t>(numel) + 3u) & ~uint64_t(3); }

}  // namespace noisefast
