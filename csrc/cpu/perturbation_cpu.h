// CPU kernels of the perturbation ops, called by csrc/ops/perturbation.cpp (which checks the
// arguments and allocates the outputs):
//   consistency_pair          x_cur = x + sigma[p] z, x_next = x + sigma_next[p] z, one z
//   add_noise                 eps = z + k o[c]; x_noisy = alpha[p] x + sigma[p] (eps + g xi); target = eps
//   sampled_consistency_pair  per-sample levels by inverse CDF (levels.h), then consistency_pair
//   perturbation_noise_grad   per-sample sums of grad * noise, noise = eps + g xi regenerated from the
//                             seed: the gradient with respect to sigma of both ops, z never stored
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
#include "noisefast/perturbation.h"
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

// The offset normals of n elements, one per (sample, channel) row of channel_inner elements (element
// r of stream kStreamOffset for row r): few, drawn once before a pass. Empty without offset noise.
inline std::vector<float> offset_normals(int64_t n, uint64_t seed, double offset_noise, int64_t channel_inner) {
  std::vector<float> offsets;
  if (offset_noise != 0.0 && n > 0) {
    offsets.resize(static_cast<size_t>((n - 1) / channel_inner + 1));
    float* data = offsets.data();
    for_each_normal(static_cast<int64_t>(offsets.size()), seed, kStreamOffset, 0,
                    [data](int64_t i, float v) { data[i] = v; });
  }
  return offsets;
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
        const acc_t eps = offset_eps<acc_t>(zc[i - i0], shift);
        acc_t noise = eps;
        if constexpr (kPerturb) noise = perturbed_noise<acc_t>(eps, gamma, xic[i - i0]);
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
  const std::vector<float> offsets = offset_normals(n, seed, offset_noise, channel_inner);
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

// sums[k * count + p] += the sum over the elements i of sample p = i / sample_inner of
// grads[k][i] * noise_i (k < kGrads), noise_i = eps + gamma xi as add_noise draws it (perturbation.h).
// Products in the math type, sums in double. A fixed split into tasks (normal_stream_cpu.h) makes
// the result independent of the number of threads: a task owns the samples strictly inside its
// element range; its first and last samples, which neighbouring tasks may share, are summed per task
// and added in task order at the end.
template <typename scalar_t, typename acc_t, int kGrads, bool kPerturb>
void noise_grad_loop(const std::array<const scalar_t*, kGrads>& grads, double* sums, int64_t count, int64_t n,
                     uint64_t seed, acc_t gamma, const float* offsets, acc_t offset_scale, int64_t sample_inner,
                     int64_t channel_inner, uint64_t offset) {
  constexpr int kStreams = kPerturb ? 2 : 1;
  std::array<uint64_t, kStreams> streams;
  streams[0] = kStreamNoise;
  if constexpr (kPerturb) streams[1] = kStreamPerturbation;
  const int64_t tasks = noise_task_count(n, offset);
  const int64_t blocks = noise_block_count(n, offset);
  // The first and last sample of task t.
  const auto task_samples = [&](int64_t t) {
    const int64_t first_block = static_cast<int64_t>(first_noise_block(offset));
    const int64_t begin = std::max<int64_t>((first_block + t * kBlocksPerTask) * kNormalsPerBlock
                                            - static_cast<int64_t>(offset), 0);
    const int64_t end = std::min<int64_t>((first_block + std::min(blocks, (t + 1) * kBlocksPerTask)) * kNormalsPerBlock
                                          - static_cast<int64_t>(offset), n);
    return std::array<int64_t, 2>{begin / sample_inner, (end - 1) / sample_inner};
  };
  std::vector<double> edges(static_cast<size_t>(tasks) * 2 * kGrads, 0.0);  // [task][first, last][k]
  for_each_noise_chunk_by_task<kStreams>(n, seed, streams, offset, [&](int64_t t, int64_t i0, int64_t i1, const auto& z) {
    const float* zc = z[0];
    const float* xic = z[kStreams - 1];
    const std::array<int64_t, 2> own = task_samples(t);
    const int64_t run_inner = offsets == nullptr ? sample_inner : channel_inner;
    for_each_run(i0, i1, run_inner, [&](int64_t begin, int64_t end, int64_t row) {
      const int64_t p = begin / sample_inner;
      const acc_t shift = offsets == nullptr ? acc_t(0) : offset_scale * static_cast<acc_t>(offsets[row]);
      std::array<double, kGrads> run_sum{};
      for (int64_t i = begin; i < end; ++i) {
        const acc_t eps = offset_eps<acc_t>(zc[i - i0], shift);
        acc_t noise = eps;
        if constexpr (kPerturb) noise = perturbed_noise<acc_t>(eps, gamma, xic[i - i0]);
        for (int k = 0; k < kGrads; ++k) run_sum[k] += static_cast<double>(static_cast<acc_t>(grads[k][i]) * noise);
      }
      double* target = p == own[0]   ? &edges[static_cast<size_t>(t * 2) * kGrads]
                       : p == own[1] ? &edges[static_cast<size_t>(t * 2 + 1) * kGrads]
                                     : nullptr;
      for (int k = 0; k < kGrads; ++k) {
        if (target != nullptr) {
          target[k] += run_sum[k];
        } else {
          sums[k * count + p] += run_sum[k];
        }
      }
    });
  });
  for (int64_t t = 0; t < tasks; ++t) {
    const std::array<int64_t, 2> own = task_samples(t);
    for (int k = 0; k < kGrads; ++k) {
      sums[k * count + own[0]] += edges[static_cast<size_t>(t * 2) * kGrads + k];
      if (own[1] != own[0]) sums[k * count + own[1]] += edges[static_cast<size_t>(t * 2 + 1) * kGrads + k];
    }
  }
}

// The gradient of consistency_pair (gamma = offset_noise = 0) and add_noise with respect to their
// per-sample sigma: out[k][p] = sum over sample p (p = i / sample_inner < count) of grads[k][i] * noise_i.
// grads: 1 or 2 contiguous tensors of one dtype and size; out: [len(grads), count], contiguous, in
// the math type of the grads.
inline void perturbation_noise_grad(const std::vector<at::Tensor>& grads, uint64_t seed, double input_perturbation,
                                    double offset_noise, int64_t sample_inner, int64_t channel_inner, uint64_t offset,
                                    at::Tensor& out) {
  const int64_t n = grads[0].numel();
  const int64_t count = out.size(1);
  const std::vector<float> offsets = offset_normals(n, seed, offset_noise, channel_inner);
  std::vector<double> sums(static_cast<size_t>(grads.size() * count), 0.0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grads[0].scalar_type(), "perturbation_noise_grad_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const auto run = [&](auto perturb, auto num_grads) {
      constexpr int kGrads = decltype(num_grads)::value;
      std::array<const scalar_t*, kGrads> data;
      for (int k = 0; k < kGrads; ++k) data[k] = grads[k].data_ptr<scalar_t>();
      noise_grad_loop<scalar_t, acc_t, kGrads, decltype(perturb)::value>(
          data, sums.data(), count, n, seed, static_cast<acc_t>(input_perturbation),
          offsets.empty() ? nullptr : offsets.data(), static_cast<acc_t>(offset_noise), sample_inner, channel_inner,
          offset);
    };
    const auto with_grads = [&](auto perturb) {
      if (grads.size() == 2) {
        run(perturb, std::integral_constant<int, 2>{});
      } else {
        run(perturb, std::integral_constant<int, 1>{});
      }
    };
    if (input_perturbation != 0.0) {
      with_grads(std::true_type{});
    } else {
      with_grads(std::false_type{});
    }
    acc_t* out_data = out.data_ptr<acc_t>();
    for (size_t j = 0; j < sums.size(); ++j) out_data[j] = static_cast<acc_t>(sums[j]);
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
