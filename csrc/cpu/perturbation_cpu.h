// CPU kernels of the perturbation ops, called by csrc/ops/perturbation.cpp (which checks the
// arguments and allocates the outputs):
//   consistency_pair          x_cur = x + sigma[p] z, x_next = x + sigma_next[p] z, one z
//   add_noise                 eps = z + k o[c]; x_noisy = alpha[p] x + sigma[p] (eps + g xi); target = eps
//   sampled_consistency_pair  per-sample levels by inverse CDF (levels.h), then consistency_pair
// with p = i / inner (the sample of element i), c = i / channel_inner (its (sample, channel) row).
// Semantics and argument conventions: noisefast/reference/perturbation.py. Element i draws element
// offset + i of each normal stream; one pass over x, the noise never stored.
//
// Speed: the normals come a chunk at a time from normal_stream_cpu.h (vectorised Philox and
// Box-Muller), then a loop over a run of elements that share their per-sample values applies the
// formula; both loops vectorise.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "noisefast/levels.h"
#include "noisefast/math_type.h"
#include "noisefast/streams.h"
#include "normal_stream_cpu.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/perturbation.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// Calls run(begin, end, p) for the maximal sub-ranges of [i0, i1) whose elements share p = i / inner.
template <typename Run>
inline void for_each_run(int64_t i0, int64_t i1, int64_t inner, const Run& run) {
  for (int64_t i = i0; i < i1;) {
    const int64_t p = i / inner;
    const int64_t end = std::min(i1, (p + 1) * inner);
    run(i, end, p);
    i = end;
  }
}

template <typename scalar_t, typename acc_t>
void consistency_pair_loop(const scalar_t* x, scalar_t* cur, scalar_t* next, int64_t n, uint64_t seed,
                           const acc_t* sigma, const acc_t* sigma_next, int64_t inner, uint64_t offset) {
  for_each_noise_chunk<1>(n, seed, {kStreamNoise}, offset, [&](int64_t i0, int64_t i1, const auto& z) {
    const float* zc = z[0];  // zc[i - i0]: the normal of element i
    for_each_run(i0, i1, inner, [&](int64_t begin, int64_t end, int64_t p) {
      const acc_t s0 = sigma[p], s1 = sigma_next[p];
      for (int64_t i = begin; i < end; ++i) {
        const acc_t xv = static_cast<acc_t>(x[i]);
        const acc_t zv = static_cast<acc_t>(zc[i - i0]);
        cur[i] = static_cast<scalar_t>(xv + s0 * zv);
        next[i] = static_cast<scalar_t>(xv + s1 * zv);
      }
    });
  });
}

// cur = x + sigma[p] z, next = x + sigma_next[p] z (p = i / inner); x, cur, next contiguous, sigma and
// sigma_next contiguous in the math type with an entry for every p.
inline void consistency_pair(const at::Tensor& x, uint64_t seed, const at::Tensor& sigma, const at::Tensor& sigma_next,
                             int64_t inner, uint64_t offset, at::Tensor& cur, at::Tensor& next) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "consistency_pair_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    consistency_pair_loop<scalar_t, acc_t>(x.data_ptr<scalar_t>(), cur.data_ptr<scalar_t>(), next.data_ptr<scalar_t>(),
                                           x.numel(), seed, sigma.data_ptr<acc_t>(), sigma_next.data_ptr<acc_t>(),
                                           inner, offset);
  });
}

template <typename scalar_t, typename acc_t, bool kPerturb>
void add_noise_loop(const scalar_t* x, scalar_t* noisy, scalar_t* target, int64_t n, uint64_t seed,
                    const acc_t* alpha, const acc_t* sigma, acc_t gamma, const float* offsets, acc_t offset_scale,
                    int64_t sample_inner, int64_t channel_inner, uint64_t offset) {
  constexpr int kStreams = kPerturb ? 2 : 1;
  std::array<uint64_t, kStreams> streams;
  streams[0] = kStreamNoise;
  if constexpr (kPerturb) streams[1] = kStreamPerturbation;
  for_each_noise_chunk<kStreams>(n, seed, streams, offset, [&](int64_t i0, int64_t i1, const auto& z) {
    const float* zc = z[0];
    const float* xic = z[kStreams - 1];  // the perturbation normals when kPerturb
    // Runs of one (sample, channel) row when there is offset noise, else of one sample; rows nest
    // in samples (sample_inner = C * channel_inner, or numel for scalar alpha and sigma).
    const int64_t run_inner = offsets == nullptr ? sample_inner : channel_inner;
    for_each_run(i0, i1, run_inner, [&](int64_t begin, int64_t end, int64_t row) {
      const int64_t p = begin / sample_inner;
      const acc_t a = alpha[p], s = sigma[p];
      // z + 0 == z exactly, so no offset noise needs no branch in the loop.
      const acc_t shift = offsets == nullptr ? acc_t(0) : offset_scale * static_cast<acc_t>(offsets[row]);
      for (int64_t i = begin; i < end; ++i) {
        const acc_t eps = static_cast<acc_t>(zc[i - i0]) + shift;
        acc_t noise = eps;
        if constexpr (kPerturb) noise = eps + gamma * static_cast<acc_t>(xic[i - i0]);
        noisy[i] = static_cast<scalar_t>(a * static_cast<acc_t>(x[i]) + s * noise);
        target[i] = static_cast<scalar_t>(eps);
      }
    });
  });
}

// noisy = alpha[p] x + sigma[p] (eps + gamma xi), target = eps = z + offset_noise o[i / channel_inner]
// (p = i / sample_inner); tensors as for consistency_pair.
inline void add_noise(const at::Tensor& x, uint64_t seed, const at::Tensor& alpha, const at::Tensor& sigma,
                      double input_perturbation, double offset_noise, int64_t sample_inner, int64_t channel_inner,
                      uint64_t offset, at::Tensor& noisy, at::Tensor& target) {
  const int64_t n = x.numel();
  // The offset normals, one per (sample, channel) row: few, drawn once before the pass.
  std::vector<float> offsets;
  if (offset_noise != 0.0 && n > 0) {
    offsets.resize(static_cast<size_t>((n - 1) / channel_inner + 1));
    float* data = offsets.data();
    for_each_normal(static_cast<int64_t>(offsets.size()), seed, kStreamOffset, 0,
                    [data](int64_t i, float v) { data[i] = v; });
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "add_noise_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const auto run = [&](auto perturb) {
      add_noise_loop<scalar_t, acc_t, decltype(perturb)::value>(
          x.data_ptr<scalar_t>(), noisy.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), n, seed,
          alpha.data_ptr<acc_t>(), sigma.data_ptr<acc_t>(), static_cast<acc_t>(input_perturbation),
          offsets.empty() ? nullptr : offsets.data(), static_cast<acc_t>(offset_noise), sample_inner, channel_inner,
          offset);
    };
    if (input_perturbation != 0.0) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
}

// The level pair of samples 0 .. B-1 (levels.h): sigma, sigma_next, weight (float32 [B]) and index
// (int64 [B]) from the n ascending float64 levels and the n - 1 float64 cdf values, contiguous.
inline void sample_levels(uint64_t seed, const at::Tensor& sigmas, const at::Tensor& cdf, at::Tensor& sigma,
                          at::Tensor& sigma_next, at::Tensor& weight, at::Tensor& index) {
  const double* levels = sigmas.data_ptr<double>();
  const double* cdf_data = cdf.data_ptr<double>();
  const int64_t m = cdf.numel();
  float* sigma_data = sigma.data_ptr<float>();
  float* sigma_next_data = sigma_next.data_ptr<float>();
  float* weight_data = weight.data_ptr<float>();
  int64_t* index_data = index.data_ptr<int64_t>();
  at::parallel_for(0, index.numel(), 4096, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const Level level = sample_level(seed, kStreamLevels, static_cast<uint64_t>(b), levels, cdf_data, m);
      index_data[b] = level.index;
      sigma_data[b] = level.sigma;
      sigma_next_data[b] = level.sigma_next;
      weight_data[b] = level.weight;
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
