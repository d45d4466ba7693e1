// Entry point of the CUDA gaussian_noise kernel (csrc/cuda/gaussian_noise.cu): raw pointers, sizes
// and a stream, nothing from torch. Returns the launch's cudaError_t; the caller
// (csrc/ops/gaussian_noise.cpp) turns it into an exception.
#pragma once

#include <cuda_runtime_api.h>
#include <stdint.h>

#include "noisefast/dtype.h"
#include "noisefast/stream_map.h"

namespace noisefast {
namespace cuda {

// out[i] = x[i] + std * scale[(i / inner) % period] * z_i (scale may be null: then std alone), z_i
// element map.position(i) of the noise stream. scale has the math type: double for kFloat64 data,
// float otherwise.
cudaError_t launch_gaussian_noise(const void* x, void* out, DType dtype, int64_t n, const int64_t* seed,
                                  double std, const void* scale, int64_t period, int64_t inner,
                                  const StreamMap& map, cudaStream_t cuda_stream);

}  // namespace cuda
}  // namespace noisefast
