// Torch-facing helpers for the CUDA glue files (*_glue.cpp): dtype mapping, the current stream,
// and turning a launcher's cudaError_t into an exception.
#pragma once

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "noisefast/dtype.h"

namespace noisefast {
namespace cuda {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, "noisefast: unsupported dtype ", t.scalar_type(),
                         " (expected float32, float16, bfloat16 or float64)");
  }
}

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
