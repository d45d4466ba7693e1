// Walks the portable normal stream on the CPU: the loops every CPU kernel drawing noise uses.
//
// Normals are made a chunk at a time (kChunkBlocks Philox blocks) in structure-of-arrays form so
// that the compiler vectorises Philox (philox.h, the shared definition), the uniforms, and the
// Box-Muller transform (vector_math_cpu.h). A kernel then consumes each chunk with a plain loop
// that also vectorises.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "noisefast/philox.h"
#include "vector_math_cpu.h"

namespace noisefast {
namespace cpu {

constexpr int kChunkBlocks = 64;                              // Philox blocks per chunk
constexpr int kChunkNormals = kChunkBlocks * kNormalsPerBlock;  // 256 normals per chunk
constexpr int64_t kBlocksPerTask = 4096;                      // parallel grain, in Philox blocks

// z[0 .. 4*count) = elements 4*q0 .. 4*(q0+count) - 1 of the normal stream, count <= kChunkBlocks.
// (A whole chunk of Philox blocks is computed even when count is smaller: fixed trip counts vectorise.)
#if defined(__x86_64__) && !defined(__clang__)
__attribute__((target_clones("avx2", "default")))
#endif
static inline void normal_chunk(uint64_t seed, uint64_t stream, uint64_t q0, int count, float* __restrict__ z) {
  // Philox over the chunk one round at a time (the same rounds as philox4x32_10, scheduled so
  // that each round is one vector loop over the blocks).
  alignas(64) uint32_t c0[kChunkBlocks], c1[kChunkBlocks], c2[kChunkBlocks], c3[kChunkBlocks];
  for (int k = 0; k < kChunkBlocks; ++k) {
    const uint64_t q = q0 + static_cast<uint64_t>(k);
    c0[k] = static_cast<uint32_t>(q);
    c1[k] = static_cast<uint32_t>(q >> 32);
    c2[k] = static_cast<uint32_t>(stream);
    c3[k] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    for (int k = 0; k < kChunkBlocks; ++k) philox_round(c0[k], c1[k], c2[k], c3[k], k0, k1);
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  alignas(64) float u0[kChunkBlocks], u1[kChunkBlocks], u2[kChunkBlocks], u3[kChunkBlocks];
  for (int k = 0; k < kChunkBlocks; ++k) {
    u0[k] = uniform_open01(c0[k]);
    u1[k] = uniform_open01(c1[k]);
    u2[k] = uniform_open01(c2[k]);
    u3[k] = uniform_open01(c3[k]);
  }
  for (int k = 0; k < count; ++k) {
    const float r0 = std::sqrt(-2.0f * vlogf(u0[k]));
    const float r2 = std::sqrt(-2.0f * vlogf(u2[k]));
    float c1, s1, c3, s3;
    vsincosf(6.28318548202514648f * u1[k], &c1, &s1);
    vsincosf(6.28318548202514648f * u3[k], &c3, &s3);
    z[4 * k + 0] = r0 * c1;
    z[4 * k + 1] = r0 * s1;
    z[4 * k + 2] = r2 * c3;
    z[4 * k + 3] = r2 * s3;
  }
}

// Calls consume(i0, count, z) over [0, n) in parallel, where z[0 .. count) are elements
// offset + i0 .. offset + i0 + count - 1 of the normal stream (seed, stream). Each call covers a
// contiguous range of at most kChunkNormals outputs; consume must touch only those outputs.
template <typename Consume>
void for_each_normal_chunk(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, const Consume& consume) {
  if (n <= 0) return;
  const uint64_t first_block = offset / kNormalsPerBlock;
  const uint64_t end_block = (offset + static_cast<uint64_t>(n) - 1) / kNormalsPerBlock + 1;
  const int64_t num_blocks = static_cast<int64_t>(end_block - first_block);
  at::parallel_for(0, num_blocks, kBlocksPerTask, [&](int64_t begin, int64_t end) {
    alignas(64) float z[kChunkNormals];
    for (int64_t k = begin; k < end; k += kChunkBlocks) {
      const int count = static_cast<int>(std::min<int64_t>(kChunkBlocks, end - k));
      const uint64_t q0 = first_block + static_cast<uint64_t>(k);
      normal_chunk(seed, stream, q0, count, z);
      // Output index of z[0]; the very first chunk may start before offset, the last may run past n.
      const int64_t base = static_cast<int64_t>(q0 * kNormalsPerBlock - offset);
      const int64_t lo = std::max<int64_t>(0, -base);
      const int64_t hi = std::min<int64_t>(static_cast<int64_t>(count) * kNormalsPerBlock, n - base);
      if (hi > lo) consume(base + lo, hi - lo, z + lo);
    }
  });
}

// Element-wise form: visit(i, z_i) for i in [0, n). Simpler, and still fast when visit is cheap.
template <typename Visit>
void for_each_normal(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, const Visit& visit) {
  for_each_normal_chunk(n, seed, stream, offset, [&](int64_t i0, int64_t count, const float* z) {
    for (int64_t t = 0; t < count; ++t) visit(i0 + t, z[t]);
  });
}

}  // namespace cpu
}  // namespace noisefast
