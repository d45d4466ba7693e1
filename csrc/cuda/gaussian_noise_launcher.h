// Entry points of the CUDA kernels: raw pointers, sizes and a stream, nothing from torch, so that
// the .cu files compile in seconds. The torch-facing glue (*_glue.cpp) calls these.
// Every launcher returns the launch's cudaError_t; the glue turns it into an exception.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "noisefast/dtype.h"

namespace noisefast {
namespace cuda {

// out[i] = element (offset + i) of normal stream `stream` under the seed *seed (device memory).
cudaError_t launch_randn(void* out, DType dtype, int64_t n, const int64_t* seed, uint64_t stream,
                         uint64_t offset, cudaStream_t cuda_stream);

// out[i] = x[i] + std * scale[(i / inner) % period] * z_i (scale may be null: then std alone).
// scale has the math type: double for kFloat64 data, float otherwise.
cudaError_t launch_gaussian_noise(const void* x, void* out, DType dtype, int64_t n, const int64_t* seed,
                                  double std, const void* scale, int64_t period, int64_t inner,
                                  cudaStream_t cuda_stream);

}  // namespace cuda
}  // namespace noisefast
