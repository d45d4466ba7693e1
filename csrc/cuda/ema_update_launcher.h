// Entry point of the CUDA EMA kernel: raw pointers only (see launchers.h for the convention).
#pragma once

#include <cuda_runtime_api.h>

#include "noisefast/ema.h"

namespace noisefast {
namespace cuda {

// For every tensor i and profile p of `operands`: shadow <- lerp(shadow, tensor, 1 - decay_p)
// (csrc/include/noisefast/ema.h). Up to kEmaProfilesPerPass profiles per pass read each weight
// once; a list of more than a launch's tensor capacity takes several launches.
cudaError_t launch_ema_update(const EmaOperands& operands, cudaStream_t stream);

}  // namespace cuda
}  // namespace noisefast
