// Gaussian noise injection, one element: x + sigma * z, in the math type (float for float32,
// float16 and bfloat16 data; double for float64), rounded once to the storage type by the caller.
// gaussian_noise and foreach_gaussian_noise(_) (CPU and CUDA) all call this, so every noise op
// computes the same value for the same (x, sigma, z).
#pragma once

#include "noisefast/host_device.h"

namespace noisefast {

template <typename acc_t>
NF_HOST_DEVICE acc_t add_scaled_normal(acc_t x, acc_t sigma, float z) {
  return x + sigma * static_cast<acc_t>(z);
}

}  // namespace noisefast
