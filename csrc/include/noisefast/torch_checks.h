// Kernel-side argument checks shared by the CPU kernels and the CUDA glue (both .cpp, never .cu).
// messages that name the user's arguments; these checks guard the kernels' own preconditions.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace noisefast {

inline uint64_t read_seed_on_cpu(const at::Tensor& seed) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1,
              "noisefast: seed must be a one-element int64 tensor, got ", seed.scalar_type(),
              " with ", seed.numel(), " elements");
  TORCH_CHECK(seed.device().is_cpu(), "noisefast: seed must be on the CPU for a CPU kernel");
  return static_cast<uint64_t>(seed.item<int64_t>());
}

inline void check_seed_on(const at::Tensor& seed, const at::Tensor& like) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1,
              "noisefast: seed must be a one-element int64 tensor, got ", seed.scalar_type(),
              " with ", seed.numel(), " elements");
  TORCH_CHECK(seed.device() == like.device(), "noisefast: seed is on ", seed.device(),
              " but the data is on ", like.device());
}

inline void check_nonnegative(int64_t value, const char* name) {
  TORCH_CHECK(value >= 0, "noisefast: ", name, " must be >= 0, got ", value);
}

}  // namespace noisefast
