// Torch-facing C++ of noisefast_C::pseudo_huber_forward / pseudo_huber_backward (schemas:
// noisefast/ops/pseudo_huber.py): the kernels' preconditions, the outputs, and the registration of
// the CPU kernels (csrc/cpu/pseudo_huber_cpu.h). On GPUs this op runs its Triton kernels
// (noisefast/triton/pseudo_huber.py); it has no CUDA C++ kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <tuple>

#include "cpu/pseudo_huber_cpu.h"
#include "torch_checks.h"

namespace noisefast {
namespace {

void check_pair(const at::Tensor& input, const at::Tensor& target) {
  TORCH_CHECK(input.dim() >= 1, "noisefast: pseudo_huber: input needs a batch dimension");
  TORCH_CHECK(input.sizes() == target.sizes(), "noisefast: pseudo_huber: target shape ", target.sizes(),
              " differs from input shape ", input.sizes());
  TORCH_CHECK(input.scalar_type() == target.scalar_type(), "noisefast: pseudo_huber: target dtype ",
              target.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(sample_blocked(input) && same_layout(input, target),
              "noisefast: pseudo_huber kernels need sample-blocked input and target with equal strides");
}

void check_per_sample(const at::Tensor& t, const at::Tensor& input, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(0) && t.is_contiguous() &&
                  t.scalar_type() == math_scalar_type(input.scalar_type()),
              "noisefast: pseudo_huber_backward: ", what, " must be a contiguous [B] tensor in the math dtype");
}

at::Tensor pseudo_huber_forward_cpu(const at::Tensor& input, const at::Tensor& target, double c, bool per_sample) {
  check_pair(input, target);
  at::Tensor loss = at::empty({input.size(0)}, input.options().dtype(math_scalar_type(input.scalar_type())));
  if (input.size(0) > 0) cpu::pseudo_huber_forward(input, target, c, per_sample, loss);
  return loss;
}

std::tuple<at::Tensor, at::Tensor> pseudo_huber_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& target, const at::Tensor& loss,
                                                             double c, bool per_sample, bool want_input,
                                                             bool want_target) {
  check_pair(input, target);
  check_per_sample(grad, input, "grad");
  check_per_sample(loss, input, "loss");
  // empty_like keeps the (dense) layout of input, so gradient element i sits where input's does.
  at::Tensor grad_input = want_input ? at::empty_like(input) : at::Tensor();
  at::Tensor grad_target = want_target ? at::empty_like(input) : at::Tensor();
  if (input.numel() > 0 && (want_input || want_target)) {
    cpu::pseudo_huber_backward(grad, input, target, loss, c, per_sample, grad_input, grad_target);
  }
  // A gradient not asked for comes back empty.
  return {want_input ? grad_input : at::empty({0}, input.options()),
          want_target ? grad_target : at::empty({0}, input.options())};
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("pseudo_huber_forward", &pseudo_huber_forward_cpu);
  m.impl("pseudo_huber_backward", &pseudo_huber_backward_cpu);
}

}  // namespace noisefast
