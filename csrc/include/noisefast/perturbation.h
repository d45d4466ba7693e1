// The noise of the perturbation ops, one element, in the math type acc_t (math_type.h):
//   eps   = z + offset_scale * o      the target of add_noise (offset noise: o is its row's normal)
//   noise = eps + gamma * xi          what sigma multiplies in x_noisy = alpha x + sigma noise
// (consistency_pair: gamma = offset_scale = 0, noise = z). The forward kernels and the gradient
// with respect to sigma (d x_noisy / d sigma = noise, regenerated from the seed) both call these,
// so the backward sums exactly the noise the forward added. Reference:
// noisefast/reference/perturbation.py; formulas: docs/formulas.md, "Input perturbation and offset noise".
#pragma once

#include "noisefast/host_device.h"

namespace noisefast {

// shift = offset_scale * o of the element's (sample, channel) row, 0 without offset noise.
template <typename acc_t>
NF_HOST_DEVICE acc_t offset_eps(float z, acc_t shift) {
  return static_cast<acc_t>(z) + shift;
}

template <typename acc_t>
NF_HOST_DEVICE acc_t perturbed_noise(acc_t eps, acc_t gamma, float xi) {
  return eps + gamma * static_cast<acc_t>(xi);
}

}  // namespace noisefast
