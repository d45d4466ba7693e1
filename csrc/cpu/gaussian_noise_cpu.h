// CPU kernel of gaussian_noise: out = x + std * scale[(i / inner) % period] * z_i, z_i element
// map.position(i) of stream kStreamNoise of the portable normal stream (noisefast/stream_map.h);
// the per-element formula is csrc/include/noisefast/gaussian_noise.h. Called by csrc/ops/gaussian_noise.cpp, which checks the
// arguments (noisefast/ops/gaussian_noise.py explains how a broadcastable std becomes (scale, inner)).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <cstdint>

#include "noisefast/gaussian_noise.h"
#include "noisefast/math_type.h"
#include "noisefast/stream_map.h"
#include "noisefast/streams.h"
#include "normal_stream_cpu.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/gaussian_noise.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// x and out contiguous, of one shape and dtype; scale undefined (std alone) or a contiguous
// [period] tensor of the math type; inner >= 1; map checked (csrc/ops/gaussian_noise.cpp).
inline void gaussian_noise(const at::Tensor& x, at::Tensor& out, uint64_t seed, double std, const at::Tensor& scale,
                           int64_t inner, const StreamMap& map) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_noise_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    const acc_t std_value = static_cast<acc_t>(std);
    // One sigma for every element: the chunked loop, which the compiler vectorises.
    const auto add_uniform_noise = [&](acc_t sigma) {
      for_each_mapped_normal_chunk(x.numel(), seed, kStreamNoise, map, [=](int64_t i0, int64_t count, const float* z) {
        const scalar_t* src = x_data + i0;
        scalar_t* dst = out_data + i0;
        for (int64_t t = 0; t < count; ++t) {
          dst[t] = static_cast<scalar_t>(add_scaled_normal<acc_t>(static_cast<acc_t>(src[t]), sigma, z[t]));
        }
      });
    };
    if (!scale.defined()) {
      add_uniform_noise(std_value);
      return;
    }
    const acc_t* scale_data = scale.data_ptr<acc_t>();
    const int64_t period = scale.numel();
    if (period == 1) {  // a 0-d std, or a scheduled magnitude: the same product as below, once
      add_uniform_noise(std_value * scale_data[0]);
      return;
    }
    for_each_mapped_normal(x.numel(), seed, kStreamNoise, map, [=](int64_t i, float z) {
      const acc_t sigma = std_value * scale_data[(i / inner) % period];
      out_data[i] = static_cast<scalar_t>(add_scaled_normal<acc_t>(static_cast<acc_t>(x_data[i]), sigma, z));
    });
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
