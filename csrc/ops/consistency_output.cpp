// Torch-facing C++ of noisefast_C::consistency_output_forward / consistency_output_backward
// (schemas: noisefast/ops/consistency_output.py): the kernels' preconditions, the outputs, and the
// registration of the CPU kernels (csrc/cpu/consistency_output_cpu.h). On GPUs this op runs its
// Triton kernels (noisefast/triton/consistency_output.py); it has no CUDA C++ kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/consistency_output_cpu.h"
#include "torch_checks.h"

namespace noisefast {
namespace {

void check_args(const at::Tensor& raw, const at::Tensor& x, const at::Tensor& sigma) {
  TORCH_CHECK(raw.dim() >= 1, "noisefast: consistency_output: raw needs a batch dimension");
  TORCH_CHECK(raw.sizes() == x.sizes() && raw.scalar_type() == x.scalar_type(),
              "noisefast: consistency_output: raw and x differ in shape or dtype");
  TORCH_CHECK(sample_blocked(raw) && same_layout(raw, x),
              "noisefast: consistency_output kernels need sample-blocked raw and x with equal strides");
  TORCH_CHECK(sigma.dim() == 1 && (sigma.size(0) == 1 || sigma.size(0) == raw.size(0)) && sigma.is_contiguous() &&
                  sigma.scalar_type() == math_scalar_type(raw.scalar_type()),
              "noisefast: consistency_output: sigma must be a contiguous [1] or [B] tensor in the math dtype");
}

at::Tensor consistency_output_forward_cpu(const at::Tensor& raw, const at::Tensor& x, const at::Tensor& sigma,
                                          double sigma_data, double sigma_min) {
  check_args(raw, x, sigma);
  at::Tensor out = at::empty_like(raw);
  if (raw.numel() > 0) cpu::consistency_output_forward(raw, x, sigma, sigma_data, sigma_min, out);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> consistency_output_backward_cpu(
    const at::Tensor& grad, const at::Tensor& raw, const at::Tensor& x, const at::Tensor& sigma, double sigma_data,
    double sigma_min, bool want_raw, bool want_x, bool want_sigma) {
  check_args(raw, x, sigma);
  TORCH_CHECK(grad.sizes() == raw.sizes() && grad.scalar_type() == raw.scalar_type() && same_layout(grad, raw),
              "noisefast: consistency_output_backward: grad must match raw in shape, dtype and strides");
  // What is not wanted comes back empty.
  at::Tensor grad_raw = want_raw ? at::empty_like(raw) : at::empty({0}, raw.options());
  at::Tensor grad_x = want_x ? at::empty_like(raw) : at::empty({0}, raw.options());
  at::Tensor grad_sigma = want_sigma ? at::zeros_like(sigma) : at::empty({0}, sigma.options());
  if (raw.numel() > 0 && (want_raw || want_x || want_sigma)) {
    cpu::consistency_output_backward(grad, raw, x, sigma, sigma_data, sigma_min, want_raw, want_x, want_sigma,
                                     grad_raw, grad_x, grad_sigma);
  }
  return {grad_raw, grad_x, grad_sigma};
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("consistency_output_forward", &consistency_output_forward_cpu);
  m.impl("consistency_output_backward", &consistency_output_backward_cpu);
}

}  // namespace noisefast
