// noisefast_C::gaussian_noise: out = x + std * s[k] * z, z from stream 0 of the portable normal
// stream, k = (i / inner) % s.numel() when a per-position scale s is given (see
// noisefast/ops/gaussian_noise.py for how a broadcastable std becomes (s, inner)).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <optional>

#include "noisefast/noise.h"
#include "noisefast/streams.h"
#include "noisefast/torch_checks.h"
#include "normal_stream_cpu.h"
#include "outputs_cpu.h"

namespace noisefast {
namespace {

at::Tensor gaussian_noise_cpu(const at::Tensor& x_in, const at::Tensor& seed, double std,
                              const std::optional<at::Tensor>& scale_in, int64_t inner) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = cpu::new_output_like(x);
  TORCH_CHECK(inner >= 1, "noisefast: inner must be >= 1, got ", inner);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "gaussian_noise_cpu", [&] {
    using opmath_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.data_ptr<scalar_t>();
    scalar_t* out_data = out.data_ptr<scalar_t>();
    const opmath_t std_value = static_cast<opmath_t>(std);
    // One sigma for every element: the chunked loop, which the compiler vectorises.
    const auto add_uniform_noise = [&](opmath_t sigma) {
      cpu::for_each_normal_chunk(x.numel(), seed_value, kStreamNoise, 0, [=](int64_t i0, int64_t count, const float* z) {
        const scalar_t* src = x_data + i0;
        scalar_t* dst = out_data + i0;
        for (int64_t t = 0; t < count; ++t) {
          dst[t] = static_cast<scalar_t>(add_scaled_normal<opmath_t>(static_cast<opmath_t>(src[t]), sigma, z[t]));
        }
      });
    };
    if (!scale_in.has_value()) {
      add_uniform_noise(std_value);
      return;
    }
    const at::Tensor scale = scale_in->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    TORCH_CHECK(scale.numel() >= 1, "noisefast: the std tensor is empty");
    const opmath_t* scale_data = scale.data_ptr<opmath_t>();
    const int64_t period = scale.numel();
    if (period == 1) {  // a 0-d std, or a scheduled magnitude: the same product as below, once
      add_uniform_noise(std_value * scale_data[0]);
      return;
    }
    cpu::for_each_normal(x.numel(), seed_value, kStreamNoise, 0, [=](int64_t i, float z) {
      const opmath_t sigma = std_value * scale_data[(i / inner) % period];
      out_data[i] = static_cast<scalar_t>(add_scaled_normal<opmath_t>(static_cast<opmath_t>(x_data[i]), sigma, z));
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("gaussian_noise(Tensor x, Tensor seed, float std, Tensor? scale, int inner) -> Tensor");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) { m.impl("gaussian_noise", &gaussian_noise_cpu); }

}  // namespace noisefast
