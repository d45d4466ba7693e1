// Stream numbers: independent draws inside one op call share its seed and differ by stream.
// The same numbers as noisefast/random.py (STREAM_*); the exact tests against the reference fail
// if the two drift apart.
#pragma once

#include <stdint.h>

namespace noisefast {

constexpr uint64_t kStreamNoise = 0;         // the main noise z
constexpr uint64_t kStreamPerturbation = 1;  // DDPM-IP input perturbation xi
constexpr uint64_t kStreamOffset = 2;        // offset noise o, one value per (sample, channel)
constexpr uint64_t kStreamLevels = 3;        // uniforms that pick noise levels (inverse CDF)

}  // namespace noisefast
