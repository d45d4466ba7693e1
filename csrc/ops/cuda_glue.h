// Torch-facing helpers for the CUDA glue files (*_glue.cpp): dtype mapping, the current stream,
// and turning a launcher's cudaError_t into an exception.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "noisefast/dtype.h"
#include "noisefast/torch_checks.h"  // dtype_of

namespace noisefast {
namespace cuda {

// The dtype in which kernels for `data_dtype` do their arithmetic.
inline at::ScalarType opmath_dtype(at::ScalarType data_dtype) {
  return data_dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

inline void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "noisefast: ", what, " failed to launch: ", cudaGetErrorString(err));
}

}  // namespace cuda
}  // namespace noisefast
