// Torch-facing C++ of the perturbation ops noisefast_C::consistency_pair, add_noise,
// sampled_consistency_pair and perturbation_noise_grad (their gradient with respect to sigma;
// schemas: noisefast/ops/perturbation.py): the kernels' preconditions, the per-sample values and
// outputs, and the registration of the CPU kernels
// (csrc/cpu/perturbation_cpu.h). On GPUs these ops run their Triton kernels
// (noisefast/triton/perturbation.py); they have no CUDA C++ kernels.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <tuple>
#include <vector>

#include "cpu/outputs_cpu.h"
#include "cpu/perturbation_cpu.h"
#include "torch_checks.h"

namespace noisefast {
namespace {

// Per-sample values (sigma, alpha, ...) as the kernels read them: contiguous, on the CPU, in the math
// type of x, with an entry for every run of `inner` elements.
at::Tensor per_sample_values(const at::Tensor& values, const at::Tensor& x, int64_t inner, const char* name) {
  const at::Tensor v = values.to(at::kCPU, math_scalar_type(x.scalar_type())).contiguous();
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
  at::Tensor cur = cpu::new_output_like(x), next = cpu::new_output_like(x);
  cpu::consistency_pair(x, seed_value, sigma, sigma_next, inner, static_cast<uint64_t>(offset), cur, next);
  return {cur, next};
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
  at::Tensor noisy = cpu::new_output_like(x), target = cpu::new_output_like(x);
  cpu::add_noise(x, seed_value, alpha, sigma, input_perturbation, offset_noise, sample_inner, channel_inner,
                 static_cast<uint64_t>(offset), noisy, target);
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
  TORCH_CHECK(cdf.numel() >= 1 && sigmas.numel() == cdf.numel() + 1,
              "noisefast: need n >= 2 levels and n - 1 cdf values, got ", sigmas.numel(), " levels and ",
              cdf.numel(), " cdf values");
  const at::Tensor x = x_in.contiguous();
  const int64_t batch = x.size(0);
  const auto floats = x.options().dtype(at::kFloat).memory_format(at::MemoryFormat::Contiguous);
  at::Tensor sigma = at::empty({batch}, floats), sigma_next = at::empty({batch}, floats);
  at::Tensor weight = at::empty({batch}, floats);
  at::Tensor index = at::empty({batch}, x.options().dtype(at::kLong));
  cpu::sample_levels(seed_value, sigmas, cdf, sigma, sigma_next, weight, index);
  at::Tensor cur = cpu::new_output_like(x), next = cpu::new_output_like(x);
  const int64_t inner = batch > 0 ? std::max<int64_t>(x.numel() / batch, 1) : 1;
  const at::ScalarType math = math_scalar_type(x.scalar_type());
  cpu::consistency_pair(x, seed_value, sigma.to(math), sigma_next.to(math), inner, static_cast<uint64_t>(offset),
                        cur, next);
  return {cur, next, sigma, sigma_next, weight, index};
}

at::Tensor perturbation_noise_grad_cpu(at::TensorList grads_in, const at::Tensor& seed, double input_perturbation,
                                       double offset_noise, int64_t count, int64_t sample_inner, int64_t channel_inner,
                                       int64_t offset) {
  TORCH_CHECK(grads_in.size() == 1 || grads_in.size() == 2, "noisefast: perturbation_noise_grad takes 1 or 2 grads, got ",
              grads_in.size());
  TORCH_CHECK(sample_inner >= 1 && channel_inner >= 1, "noisefast: sample_inner and channel_inner must be >= 1");
  check_nonnegative(count, "count");
  check_nonnegative(offset, "offset");
  const uint64_t seed_value = read_seed_on_cpu(seed);
  std::vector<at::Tensor> grads;
  for (const at::Tensor& g : grads_in) {
    TORCH_CHECK(g.device().is_cpu() && g.scalar_type() == grads_in[0].scalar_type() &&
                    g.numel() == grads_in[0].numel(),
                "noisefast: the grads must be CPU tensors of one dtype and size");
    grads.push_back(g.contiguous());
  }
  const int64_t n = grads[0].numel();
  TORCH_CHECK(n == 0 || (n - 1) / sample_inner < count, "noisefast: ", n, " elements of ", sample_inner,
              " per sample need more than ", count, " samples");
  at::Tensor out = at::empty({static_cast<int64_t>(grads.size()), count},
                             grads[0].options().dtype(math_scalar_type(grads[0].scalar_type())));
  cpu::perturbation_noise_grad(grads, seed_value, input_perturbation, offset_noise, sample_inner, channel_inner,
                               static_cast<uint64_t>(offset), out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("consistency_pair", &consistency_pair_cpu);
  m.impl("add_noise", &add_noise_cpu);
  m.impl("sampled_consistency_pair", &sampled_consistency_pair_cpu);
  m.impl("perturbation_noise_grad", &perturbation_noise_grad_cpu);
}

}  // namespace noisefast
