// Torch-facing preparation of the EMA kernels' operands, shared by the CPU kernel
// (csrc/cpu/ema_cpu.cpp, which defines it) and the CUDA glue (csrc/cuda/ema_glue.cpp).
#pragma once

#include <ATen/ATen.h>

#include <functional>
#include <optional>

#include "noisefast/ema.h"

namespace noisefast {

// Checks the operands (each error names the user's argument and is raised before anything is
// written), arranges their layout, and calls run(operands) once with raw pointers. See
// ema_cpu.cpp for the layout and decay rules.
void with_ema_operands(at::TensorList emas, at::TensorList tensors, at::ArrayRef<double> decays,
                       const std::optional<at::Tensor>& decay, bool multi,
                       const std::function<void(const EmaOperands&)>& run);

}  // namespace noisefast
