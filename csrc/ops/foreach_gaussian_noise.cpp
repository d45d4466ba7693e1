// CUDA registration of noisefast_C::add_noise_ and noisy_copies (schemas, argument checks and
// operand layout in csrc/cpu/add_noise_cpu.cpp, shared with the CPU kernel).
#include <torch/library.h>

#include <optional>
#include <vector>

#include "add_noise_launchers.h"
#include "cuda_glue.h"
#include "noisefast/add_noise_operands.h"

namespace noisefast {

namespace {

std::optional<c10::Device> device_of(at::TensorList tensors) {
  if (tensors.empty() || !tensors[0].is_cuda()) return std::nullopt;
  return tensors[0].device();
}

// The seed on the tensors' device: the kernel reads it there (no host sync, CUDA-graph safe).
std::function<void(AddNoiseOperands&)> launcher(at::TensorList tensors, const at::Tensor& seed) {
  if (!tensors.empty()) check_seed_on(seed, tensors[0]);
  return [seed](AddNoiseOperands& ops) {
    ops.seed_device = seed.data_ptr<int64_t>();
    cuda::check_launch(cuda::launch_add_noise(ops, cuda::current_stream()), "add_noise_");
  };
}

void add_noise_cuda(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                    const std::optional<at::Tensor>& std_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(device_of(tensors));
  with_add_noise_operands(tensors, stds, std_tensor, nullptr, launcher(tensors, seed));
}

std::vector<at::Tensor> noisy_copies_cuda(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                                          const std::optional<at::Tensor>& std_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(device_of(tensors));
  std::vector<at::Tensor> outs;
  with_add_noise_operands(tensors, stds, std_tensor, &outs, launcher(tensors, seed));
  return outs;
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) {
  m.impl("add_noise_", &add_noise_cuda);
  m.impl("noisy_copies", &noisy_copies_cuda);
}

}  // namespace noisefast
