// Entry point of the CUDA EMA kernel (csrc/cuda/ema_update.cu): raw pointers only, nothing from
// torch. Returns the launch's cudaError_t; the caller (csrc/ops/ema_update.cpp) turns it into an
// exception.
#pragma once

#include <cuda_runtime_api.h>

#include "noisefast/ema_update.h"

namespace noisefast {
namespace cuda {

// For every tensor i and profile p of `operands`: shadow <- lerp(shadow, tensor, 1 - decay_p)
// (csrc/include/noisefast/ema_update.h). Up to kEmaProfilesPerPass profiles per pass read each weight
// once; a list of more than a launch's tensor capacity takes several launches.
cudaError_t launch_ema_update(const EmaOperands& operands, cudaStream_t stream);

}  // namespace cuda
}  // namespace noisefast
