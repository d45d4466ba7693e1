// Torch-facing preparation of the list-noise kernels' operands, shared by the CPU kernel
// (csrc/cpu/add_noise_cpu.cpp, which defines it) and the CUDA glue (csrc/cuda/add_noise_glue.cpp).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>
#include <vector>

#include "noisefast/add_noise.h"

namespace noisefast {

// Checks the operands (each error names the user's argument, `tensors` or `std`, and is raised
// before anything is written), lays them out and calls run(operands) once. In place (outs null):
// non-contiguous tensors are updated through a contiguous copy written back afterwards. Out of
// place: *outs receives one new contiguous tensor per input. The seed is left to the caller.
void with_add_noise_operands(at::TensorList tensors, at::ArrayRef<double> stds,
                             const std::optional<at::Tensor>& std_tensor, std::vector<at::Tensor>* outs,
                             const std::function<void(AddNoiseOperands&)>& run);

}  // namespace noisefast
