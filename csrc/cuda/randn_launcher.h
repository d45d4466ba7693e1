// Entry point of the CUDA randn kernel (csrc/cuda/randn.cu): raw pointers, sizes and a stream,
// nothing from torch, so that the .cu file compiles in seconds. Returns the launch's cudaError_t;
// the caller (csrc/ops/randn.cpp) turns it into an exception.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "noisefast/dtype.h"

namespace noisefast {
namespace cuda {

// out[i] = element (offset + i) of normal stream `stream` under the seed *seed (device memory).
cudaError_t launch_randn(void* out, DType dtype, int64_t n, const int64_t* seed, uint64_t stream,
                         uint64_t offset, cudaStream_t cuda_stream);

}  // namespace cuda
}  // namespace noisefast
