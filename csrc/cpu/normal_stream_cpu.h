// Walks the portable normal stream on the CPU: the loop that every CPU kernel drawing noise uses.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "noisefast/philox.h"

namespace noisefast {
namespace cpu {

// Philox blocks per parallel task: each block costs ~40 ns (ten rounds, a log and a sincos), so
// 2048 blocks keep the parallel overhead small.
constexpr int64_t kBlocksPerTask = 2048;

// Calls visit(i, z) for i in [0, n), with z = element (offset + i) of the normal stream
// (seed, stream). Elements are visited in parallel; visit must only touch element i.
template <typename Visit>
void for_each_normal(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, const Visit& visit) {
  if (n <= 0) return;
  const uint64_t first_block = offset / kNormalsPerBlock;
  const uint64_t end_block = (offset + static_cast<uint64_t>(n) - 1) / kNormalsPerBlock + 1;
  const int64_t num_blocks = static_cast<int64_t>(end_block - first_block);
  at::parallel_for(0, num_blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const uint64_t q = first_block + static_cast<uint64_t>(k);
      const Normal4 z = normal4(seed, stream, q);
      // Index (into the output) of lane 0 of this block; may be negative in the first block.
      const int64_t base = static_cast<int64_t>(q * kNormalsPerBlock - offset);
      const int lane_begin = base < 0 ? static_cast<int>(-base) : 0;
      const int lane_end = static_cast<int>(std::min<int64_t>(kNormalsPerBlock, n - base));
      for (int lane = lane_begin; lane < lane_end; ++lane) visit(base + lane, z.z[lane]);
    }
  });
}

}  // namespace cpu
}  // namespace noisefast
