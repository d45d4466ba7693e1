// CPU kernels of the perturbation ops (schemas defined here):
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
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>
#include <type_traits>
#include <vector>

#include "noisefast/levels.h"
#include "noisefast/torch_checks.h"
#include "noisefast/streams.h"
#include "normal_stream_cpu.h"
#include "outputs_cpu.h"

namespace noisefast {
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

template <typename scalar_t, typename opmath_t>
void consistency_pair_loop(const scalar_t* x, scalar_t* cur, scalar_t* next, int64_t n, uint64_t seed,
                           const opmath_t* sigma, const opmath_t* sigma_next, int64_t inner, uint64_t offset) {
  cpu::for_each_noise_chunk<1>(n, seed, {kStreamNoise}, offset, [&](int64_t i0, int64_t i1, const auto& z) {
    const float* zc = z[0];  // zc[i - i0]: the normal of element i
    for_each_run(i0, i1, inner, [&](int64_t begin, int64_t end, int64_t p) {
      const opmath_t s0 = sigma[p], s1 = sigma_next[p];
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t xv = static_cast<opmath_t>(x[i]);
        const opmath_t zv = static_cast<opmath_t>(zc[i - i0]);
        cur[i] = static_cast<scalar_t>(xv + s0 * zv);
        next[i] = static_cast<scalar_t>(xv + s1 * zv);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> pair_outputs(const at::Tensor& x) {
  return {cpu::new_output_like(x), cpu::new_output_like(x)};
}

at::Tensor per_sample_values(const at::Tensor& values, const at::Tensor& x, int64_t inner, const char* name) {
  const at::Tensor v = values.to(at::kCPU, x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat).contiguous();
  const int64_t needed = x.numel() == 0 ? 0 : (x.numel() - 1) / inner + 1;
  TORCH_CHECK(v.dim() == 1 && v.numel() >= needed, "noisefast: ", name, " needs ", needed,
              " values (one per ", inner, " elements), got shape ", values.sizes());
  return v;
}

std::tuple<at::Tensor, at::Tensor> consistency_pair_cpu(const at::Tensor& x_in, const at::Tensor& seed,
                                                        const at::Tensor& sigma_in,
                                                        const at::Tensor& sigma_next_in, int64_t inner,
                                                        int64_t offset) {
  TORCH_CHECK(inner >= 1, "noisefast: inner must be >= 1, got ", inner);
  check_nonnegative(offset, "offset");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor sigma = per_sample_values(sigma_in, x, inner, "sigma");
  const at::Tensor sigma_next = per_sample_values(sigma_next_in, x, inner, "sigma_next");
  auto [cur, next] = pair_outputs(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "consistency_pair_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    consistency_pair_loop<scalar_t, opmath_t>(x.data_ptr<scalar_t>(), cur.data_ptr<scalar_t>(),
                                              next.data_ptr<scalar_t>(), x.numel(), seed_value,
                                              sigma.data_ptr<opmath_t>(), sigma_next.data_ptr<opmath_t>(), inner,
                                              static_cast<uint64_t>(offset));
  });
  return {cur, next};
}

template <typename scalar_t, typename opmath_t, bool kPerturb>
void add_noise_loop(const scalar_t* x, scalar_t* noisy, scalar_t* target, int64_t n, uint64_t seed,
                    const opmath_t* alpha, const opmath_t* sigma, opmath_t gamma, const float* offsets,
                    opmath_t offset_scale, int64_t sample_inner, int64_t channel_inner, uint64_t offset) {
  constexpr int kStreams = kPerturb ? 2 : 1;
  std::array<uint64_t, kStreams> streams;
  streams[0] = kStreamNoise;
  if constexpr (kPerturb) streams[1] = kStreamPerturbation;
  cpu::for_each_noise_chunk<kStreams>(n, seed, streams, offset, [&](int64_t i0, int64_t i1, const auto& z) {
    const float* zc = z[0];
    const float* xic = z[kStreams - 1];  // the perturbation normals when kPerturb
    // Runs of one (sample, channel) row when there is offset noise, else of one sample; rows nest
    // in samples (sample_inner = C * channel_inner, or numel for scalar alpha and sigma).
    const int64_t run_inner = offsets == nullptr ? sample_inner : channel_inner;
    for_each_run(i0, i1, run_inner, [&](int64_t begin, int64_t end, int64_t row) {
      const int64_t p = begin / sample_inner;
      const opmath_t a = alpha[p], s = sigma[p];
      // z + 0 == z exactly, so no offset noise needs no branch in the loop.
      const opmath_t shift = offsets == nullptr ? opmath_t(0) : offset_scale * static_cast<opmath_t>(offsets[row]);
      for (int64_t i = begin; i < end; ++i) {
        const opmath_t eps = static_cast<opmath_t>(zc[i - i0]) + shift;
        opmath_t noise = eps;
        if constexpr (kPerturb) noise = eps + gamma * static_cast<opmath_t>(xic[i - i0]);
        noisy[i] = static_cast<scalar_t>(a * static_cast<opmath_t>(x[i]) + s * noise);
        target[i] = static_cast<scalar_t>(eps);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> add_noise_cpu(const at::Tensor& x_in, const at::Tensor& seed,
                                                 const at::Tensor& alpha_in, const at::Tensor& sigma_in,
                                                 double input_perturbation, double offset_noise,
                                                 int64_t sample_inner, int64_t channel_inner, int64_t offset) {
  TORCH_CHECK(sample_inner >= 1 && channel_inner >= 1, "noisefast: sample_inner and channel_inner must be >= 1");
  check_nonnegative(offset, "offset");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor alpha = per_sample_values(alpha_in, x, sample_inner, "alpha");
  const at::Tensor sigma = per_sample_values(sigma_in, x, sample_inner, "sigma");
  auto [noisy, target] = pair_outputs(x);
  const int64_t n = x.numel();
  // The offset normals, one per (sample, channel) row: few, drawn once before the pass.
  std::vector<float> offsets;
  if (offset_noise != 0.0 && n > 0) {
    offsets.resize(static_cast<size_t>((n - 1) / channel_inner + 1));
    float* data = offsets.data();
    cpu::for_each_normal(static_cast<int64_t>(offsets.size()), seed_value, kStreamOffset, 0,
                         [data](int64_t i, float v) { data[i] = v; });
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "add_noise_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const auto run = [&](auto perturb) {
      add_noise_loop<scalar_t, opmath_t, decltype(perturb)::value>(
          x.data_ptr<scalar_t>(), noisy.data_ptr<scalar_t>(), target.data_ptr<scalar_t>(), n, seed_value,
          alpha.data_ptr<opmath_t>(), sigma.data_ptr<opmath_t>(), static_cast<opmath_t>(input_perturbation),
          offsets.empty() ? nullptr : offsets.data(), static_cast<opmath_t>(offset_noise), sample_inner,
          channel_inner, static_cast<uint64_t>(offset));
    };
    if (input_perturbation != 0.0) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
    }
  });
  return {noisy, target};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sampled_consistency_pair_cpu(
    const at::Tensor& x_in, const at::Tensor& seed, const at::Tensor& sigmas_in, const at::Tensor& cdf_in,
    int64_t offset) {
  check_nonnegative(offset, "offset");
  TORCH_CHECK(x_in.dim() >= 1, "noisefast: x needs a batch dimension");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  const at::Tensor sigmas = sigmas_in.to(at::kCPU, at::kDouble).contiguous();
  const at::Tensor cdf = cdf_in.to(at::kCPU, at::kDouble).contiguous();
  const int64_t m = cdf.numel();
  TORCH_CHECK(m >= 1 && sigmas.numel() == m + 1, "noisefast: need n >= 2 levels and n - 1 cdf values, got ",
              sigmas.numel(), " levels and ", m, " cdf values");
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0);
  const auto floats = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor sigma = at::empty({batch}, floats), sigma_next = at::empty({batch}, floats);
  at::Tensor weight = at::empty({batch}, floats);
  at::Tensor index = at::empty({batch}, x.options().dtype(at::kLong));
  {
    const double* levels = sigmas.data_ptr<double>();
    const double* cdf_data = cdf.data_ptr<double>();
    float* sigma_data = sigma.data_ptr<float>();
    float* sigma_next_data = sigma_next.data_ptr<float>();
    float* weight_data = weight.data_ptr<float>();
    int64_t* index_data = index.data_ptr<int64_t>();
    at::parallel_for(0, batch, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const Level level = sample_level(seed_value, kStreamLevels, static_cast<uint64_t>(b), levels, cdf_data, m);
        index_data[b] = level.index;
        sigma_data[b] = level.sigma;
        sigma_next_data[b] = level.sigma_next;
        weight_data[b] = level.weight;
      }
    });
  }
  auto [cur, next] = pair_outputs(x);
  const int64_t inner = batch > 0 ? std::max<int64_t>(x.numel() / batch, 1) : 1;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "sampled_consistency_pair_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const at::Tensor s0 = sigma.to(c10::CppTypeToScalarType<opmath_t>::value);
    const at::Tensor s1 = sigma_next.to(c10::CppTypeToScalarType<opmath_t>::value);
    consistency_pair_loop<scalar_t, opmath_t>(x.data_ptr<scalar_t>(), cur.data_ptr<scalar_t>(),
                                              next.data_ptr<scalar_t>(), x.numel(), seed_value,
                                              s0.data_ptr<opmath_t>(), s1.data_ptr<opmath_t>(), inner,
                                              static_cast<uint64_t>(offset));
  });
  return {cur, next, sigma, sigma_next, weight, index};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("consistency_pair(Tensor x, Tensor seed, Tensor sigma, Tensor sigma_next, int inner, int offset)"
        " -> (Tensor, Tensor)");
  m.def("add_noise(Tensor x, Tensor seed, Tensor alpha, Tensor sigma, float input_perturbation,"
        " float offset_noise, int sample_inner, int channel_inner, int offset) -> (Tensor, Tensor)");
  m.def("sampled_consistency_pair(Tensor x, Tensor seed, Tensor sigmas, Tensor cdf, int offset)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("consistency_pair", &consistency_pair_cpu);
  m.impl("add_noise", &add_noise_cpu);
  m.impl("sampled_consistency_pair", &sampled_consistency_pair_cpu);
}

}  // namespace noisefast
