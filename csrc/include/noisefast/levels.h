// Discrete noise levels drawn by inverse CDF from the portable uniform stream (host and device).
//
// The definition, shared with noisefast/triton/levels.py and noisefast/reference/perturbation.py:
//   u_b   = element b of the uniform stream `stream` (noisefast.random.STREAM_LEVELS) under `seed`:
//           uniform_open01 of Philox word b % 4 of block b / 4 (philox.h), a float32 in (0, 1);
//   i_b   = the smallest i in [0, m) with u_b < cdf[i] (cdf: m = n - 1 nondecreasing float64 entries,
//           cdf[i] = P(interval <= i), the last one 1), clamped to m - 1. The comparison is in
//           float64 (u_b is exact there), so every backend picks the same interval;
//   level = (sigma_i, sigma_{i+1}) from the n ascending levels, as float32, and the iCT loss
//           weight 1 / (sigma_{i+1} - sigma_i) (Song & Dhariwal 2023) formed in float64.
#pragma once

#include <stdint.h>

#include "noisefast/philox.h"

namespace noisefast {

// Element b of the uniform stream (seed, stream).
NF_HOST_DEVICE float stream_uniform(uint64_t seed, uint64_t stream, uint64_t b) {
  const PhiloxWords words = philox_block(seed, stream, b / kNormalsPerBlock);
  return uniform_open01(words.w[b % kNormalsPerBlock]);
}

// The smallest i in [0, m) with u < cdf[i], or m - 1 when there is none (m >= 1).
NF_HOST_DEVICE int64_t inverse_cdf_index(const double* cdf, int64_t m, double u) {
  int64_t lo = 0, hi = m;  // the answer lies in [lo, hi]
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (cdf[mid] <= u) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo < m ? lo : m - 1;
}

struct Level {
  int64_t index;     // i: the pair sigma_i < sigma_{i+1}
  float sigma;       // sigma_i, rounded to float32
  float sigma_next;  // sigma_{i+1}, rounded to float32
  float weight;      // 1 / (sigma_{i+1} - sigma_i), from the float64 levels
};

// The level of sample b: sigmas holds the n = m + 1 ascending levels, cdf the m interval CDF values.
NF_HOST_DEVICE Level sample_level(uint64_t seed, uint64_t stream, uint64_t b, const double* sigmas,
                                  const double* cdf, int64_t m) {
  const int64_t i = inverse_cdf_index(cdf, m, static_cast<double>(stream_uniform(seed, stream, b)));
  const double lo = sigmas[i], hi = sigmas[i + 1];
  return Level{i, static_cast<float>(lo), static_cast<float>(hi), static_cast<float>(1.0 / (hi - lo))};
}

}  // namespace noisefast
