// Torch-facing helpers for the CUDA registrations in csrc/ops/*.cpp (compiled only when the
// extension has CUDA kernels): the current stream, the device guard of a tensor list, and turning a
// launcher's cudaError_t into an exception.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <optional>

namespace noisefast {
namespace cuda {

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "noisefast: ", what, " failed to launch: ", cudaGetErrorString(err));
}

// The device a list op's CUDA kernel runs on (its first tensor's), for an OptionalCUDAGuard.
inline std::optional<c10::Device> device_of(at::TensorList tensors) {
  if (tensors.empty() || !tensors[0].is_cuda()) return std::nullopt;
  return tensors[0].device();
}

}  // namespace cuda
}  // namespace noisefast
