// Entry point of the CUDA multi-tensor noise kernel (csrc/cuda/foreach_gaussian_noise.cu): raw
// pointers only, nothing from torch. Returns the launch's cudaError_t; the caller
// (csrc/ops/foreach_gaussian_noise.cpp) turns it into an exception.
#pragma once

#include <cuda_runtime_api.h>

#include "noisefast/foreach_gaussian_noise.h"

namespace noisefast {
namespace cuda {

// For every tensor i of `operands`: dst[i] = src[i] + std_i * z_i
// (csrc/include/noisefast/foreach_gaussian_noise.h), the seed read from operands.seed_device. Mixed
// dtypes share a launch; a list longer than a launch's capacity (what fits 4 KiB of kernel
// arguments, multi_tensor_apply.cuh) takes several.
cudaError_t launch_foreach_gaussian_noise(const ForeachGaussianNoiseOperands& operands, cudaStream_t stream);

}  // namespace cuda
}  // namespace noisefast
