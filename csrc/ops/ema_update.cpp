// CUDA registration of noisefast_C::ema_update and ema_update_multi (schemas, argument checks and
// operand layout in csrc/cpu/ema_cpu.cpp, shared with the CPU kernel).
#include <torch/library.h>

#include <functional>
#include <optional>

#include "cuda_glue.h"
#include "ema_launchers.h"
#include "noisefast/ema_operands.h"

namespace noisefast {

namespace {

std::optional<c10::Device> device_of(at::TensorList tensors) {
  if (tensors.empty() || !tensors[0].is_cuda()) return std::nullopt;
  return tensors[0].device();
}

void launch(const EmaOperands& operands) {
  cuda::check_launch(cuda::launch_ema_update(operands, cuda::current_stream()), "ema_update");
}

void ema_update_cuda(at::TensorList ema_tensors, at::TensorList tensors, double decay,
                     const std::optional<at::Tensor>& decay_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(device_of(tensors));
  const double decays[1] = {decay};
  with_ema_operands(ema_tensors, tensors,
                    decay_tensor.has_value() ? at::ArrayRef<double>() : at::ArrayRef<double>(decays), decay_tensor,
                    /*multi=*/false, launch);
}

void ema_update_multi_cuda(at::TensorList ema_lists, at::TensorList tensors, at::ArrayRef<double> decays,
                           const std::optional<at::Tensor>& decay_tensor) {
  TORCH_CHECK_VALUE(!decay_tensor.has_value() || decays.empty(), "pass decays as floats or as a tensor, not both");
  const c10::cuda::OptionalCUDAGuard guard(device_of(tensors));
  with_ema_operands(ema_lists, tensors, decays, decay_tensor, /*multi=*/true, launch);
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) {
  m.impl("ema_update", &ema_update_cuda);
  m.impl("ema_update_multi", &ema_update_multi_cuda);
}

}  // namespace noisefast
