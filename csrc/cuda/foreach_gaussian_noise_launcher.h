// Entry point of the CUDA list-noise kernel: raw pointers only (see launchers.h for the convention).
#pragma once

#include <cuda_runtime_api.h>

#include "noisefast/add_noise.h"

namespace noisefast {
namespace cuda {

// For every tensor i of `operands`: dst[i] = src[i] + std_i * z_i (csrc/include/noisefast/add_noise.h),
// the seed read from operands.seed_device. Mixed dtypes share a launch; a list longer than a
// launch's capacity (89 tensors: 4 KiB of kernel arguments) takes several.
cudaError_t launch_add_noise(const AddNoiseOperands& operands, cudaStream_t stream);

}  // namespace cuda
}  // namespace noisefast
