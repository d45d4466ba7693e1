// Walks the portable normal stream on the CPU: the loops every CPU kernel drawing noise uses.
//
// Normals are made a chunk at a time (kChunkBlocks Philox blocks) in structure-of-arrays form so
// that the compiler vectorises Philox (philox.h, the shared definition), the uniforms, and the
// Box-Muller transform (vector_math_cpu.h, philox.h). A kernel then consumes each chunk with a plain loop
// that also vectorises.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>

#include "multiversion_cpu.h"
#include "noisefast/philox.h"
#include "noisefast/stream_map.h"
#include "vector_math_cpu.h"

namespace noisefast {
namespace cpu {

constexpr int kChunkBlocks = 64;                              // Philox blocks per chunk
constexpr int kChunkNormals = kChunkBlocks * kNormalsPerBlock;  // 256 normals per chunk
constexpr int64_t kBlocksPerTask = 4096;                      // parallel grain, in Philox blocks

// z[0 .. 4*count) = elements 4*q0 .. 4*(q0+count) - 1 of the normal stream, count <= kChunkBlocks.
// (A whole chunk of Philox blocks is computed even when count is smaller: fixed trip counts vectorise.)
NF_ALWAYS_INLINE void normal_chunk_body(uint64_t seed, uint64_t stream, uint64_t q0, int count,
                                        float* __restrict__ z) {
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
    box_muller_angle(u1[k], &c1, &s1);
    box_muller_angle(u3[k], &c3, &s3);
    z[4 * k + 0] = r0 * c1;
    z[4 * k + 1] = r0 * s1;
    z[4 * k + 2] = r2 * c3;
    z[4 * k + 3] = r2 * s3;
  }
}

inline void normal_chunk_baseline(uint64_t seed, uint64_t stream, uint64_t q0, int count, float* z) {
  normal_chunk_body(seed, stream, q0, count, z);
}

#if NF_CPU_MULTIVERSION
// Without FMA (multiversion_cpu.h): the normals are then the same on every x86-64 CPU.
NF_TARGET_AVX2_NO_FMA inline void normal_chunk_avx2(uint64_t seed, uint64_t stream, uint64_t q0, int count,
                                                    float* z) {
  normal_chunk_body(seed, stream, q0, count, z);
}
#endif

using NormalChunkFn = void (*)(uint64_t, uint64_t, uint64_t, int, float*);

// The copy of normal_chunk this CPU runs (multiversion_cpu.h).
inline NormalChunkFn normal_chunk_fn() {
#if NF_CPU_MULTIVERSION
  if (cpu_has_avx2()) return &normal_chunk_avx2;
#endif
  return &normal_chunk_baseline;
}

// Where element `offset` of a stream falls: its Philox block, and how many blocks elements
// offset .. offset + n - 1 span (n > 0).
inline uint64_t first_noise_block(uint64_t offset) { return offset / kNormalsPerBlock; }
inline int64_t noise_block_count(int64_t n, uint64_t offset) {
  return static_cast<int64_t>((offset + static_cast<uint64_t>(n) - 1) / kNormalsPerBlock + 1 - first_noise_block(offset));
}

// Serially, body(i0, i1, z) for the element ranges of Philox blocks [begin, end) (counted from the
// first block of element 0), a chunk at a time; z as for for_each_noise_chunk. z is scratch space
// of kStreams * kChunkNormals floats.
template <int kStreams, typename Body>
void noise_chunks_of_blocks(int64_t begin, int64_t end, int64_t n, uint64_t seed,
                            const std::array<uint64_t, kStreams>& streams, uint64_t offset, NormalChunkFn normal_chunk,
                            float (*z)[kChunkNormals], const Body& body) {
  for (int64_t k = begin; k < end; k += kChunkBlocks) {
    const int count = static_cast<int>(std::min<int64_t>(kChunkBlocks, end - k));
    const uint64_t q = first_noise_block(offset) + static_cast<uint64_t>(k);
    for (int s = 0; s < kStreams; ++s) normal_chunk(seed, streams[s], q, count, z[s]);
    // Element index of the chunk's first normal; negative in the first chunk when offset % 4 != 0.
    const int64_t j0 = static_cast<int64_t>(q * kNormalsPerBlock - offset);
    const int64_t i0 = std::max<int64_t>(j0, 0);
    const int64_t i1 = std::min<int64_t>(j0 + kNormalsPerBlock * count, n);
    if (i1 <= i0) continue;
    std::array<const float*, kStreams> at_i0;
    for (int s = 0; s < kStreams; ++s) at_i0[s] = z[s] + (i0 - j0);
    body(i0, i1, at_i0);
  }
}

// Calls body(i0, i1, z) for consecutive element ranges covering [0, n), in parallel, where
// z[s][k] is element offset + i0 + k of normal stream streams[s] under seed (one std::array of
// pointers, one per stream). Each range holds at most kChunkNormals elements; body must only
// touch elements i0 .. i1 - 1.
template <int kStreams, typename Body>
void for_each_noise_chunk(int64_t n, uint64_t seed, const std::array<uint64_t, kStreams>& streams,
                          uint64_t offset, const Body& body) {
  if (n <= 0) return;
  const NormalChunkFn normal_chunk = normal_chunk_fn();
  at::parallel_for(0, noise_block_count(n, offset), kBlocksPerTask, [&](int64_t begin, int64_t end) {
    alignas(64) float z[kStreams][kChunkNormals];
    noise_chunks_of_blocks<kStreams>(begin, end, n, seed, streams, offset, normal_chunk, z, body);
  });
}

// The fixed split of a walk over n elements into tasks of kBlocksPerTask Philox blocks, for
// reductions: a task's partial sums do not depend on the number of threads, so neither does the
// result.
inline int64_t noise_task_count(int64_t n, uint64_t offset) {
  return n <= 0 ? 0 : (noise_block_count(n, offset) + kBlocksPerTask - 1) / kBlocksPerTask;
}

// Calls body(task, i0, i1, z) as for_each_noise_chunk does, task in [0, noise_task_count(n, offset))
// being the fixed task whose elements [i0, i1) are; the tasks run in parallel, the chunks of one
// task in order.
template <int kStreams, typename Body>
void for_each_noise_chunk_by_task(int64_t n, uint64_t seed, const std::array<uint64_t, kStreams>& streams,
                                  uint64_t offset, const Body& body) {
  const int64_t tasks = noise_task_count(n, offset);
  if (tasks == 0) return;
  const int64_t blocks = noise_block_count(n, offset);
  const NormalChunkFn normal_chunk = normal_chunk_fn();
  at::parallel_for(0, tasks, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float z[kStreams][kChunkNormals];
    for (int64_t t = t0; t < t1; ++t) {
      noise_chunks_of_blocks<kStreams>(t * kBlocksPerTask, std::min(blocks, (t + 1) * kBlocksPerTask), n, seed,
                                       streams, offset, normal_chunk, z,
                                       [&](int64_t i0, int64_t i1, const auto& zs) { body(t, i0, i1, zs); });
    }
  });
}

// One stream: consume(i0, count, z) with z[0 .. count) = elements offset + i0 .. of the stream.
template <typename Consume>
void for_each_normal_chunk(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, const Consume& consume) {
  for_each_noise_chunk<1>(n, seed, {stream}, offset, [&](int64_t i0, int64_t i1, const std::array<const float*, 1>& z) {
    consume(i0, i1 - i0, z[0]);
  });
}

// Element-wise form: visit(i, z_i) for i in [0, n). Simpler, and still fast when visit is cheap.
template <typename Visit>
void for_each_normal(int64_t n, uint64_t seed, uint64_t stream, uint64_t offset, const Visit& visit) {
  for_each_normal_chunk(n, seed, stream, offset, [&](int64_t i0, int64_t count, const float* z) {
    for (int64_t t = 0; t < count; ++t) visit(i0 + t, z[t]);
  });
}

// for_each_normal_chunk over a StreamMap (noisefast/stream_map.h): consume(i0, count, z) with z[k] =
// element map.position(i0 + k) of the stream. A contiguous map is for_each_normal_chunk at
// map.offset; otherwise each run of map.segment elements is a contiguous piece of the stream, walked
// with the same chunked Philox (so the normals are bit for bit those of the contiguous walk), in
// parallel over the runs.
template <typename Consume>
void for_each_mapped_normal_chunk(int64_t n, uint64_t seed, uint64_t stream, const StreamMap& map,
                                  const Consume& consume) {
  if (map.contiguous()) {
    for_each_normal_chunk(n, seed, stream, static_cast<uint64_t>(map.offset), consume);
    return;
  }
  if (n <= 0) return;
  const int64_t segment = map.segment;
  const int64_t runs = (n + segment - 1) / segment;
  const NormalChunkFn normal_chunk = normal_chunk_fn();
  const int64_t grain = std::max<int64_t>(1, kBlocksPerTask * kNormalsPerBlock / segment);
  at::parallel_for(0, runs, grain, [&](int64_t r0, int64_t r1) {
    alignas(64) float z[1][kChunkNormals];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t first = r * segment;
      const int64_t count = std::min(segment, n - first);
      const uint64_t offset = static_cast<uint64_t>(map.offset + r * map.stride);
      noise_chunks_of_blocks<1>(0, noise_block_count(count, offset), count, seed, {stream}, offset, normal_chunk, z,
                                [&](int64_t i0, int64_t i1, const std::array<const float*, 1>& zs) {
                                  consume(first + i0, i1 - i0, zs[0]);
                                });
    }
  });
}

// Element-wise form of for_each_mapped_normal_chunk: visit(i, z_i) for i in [0, n).
template <typename Visit>
void for_each_mapped_normal(int64_t n, uint64_t seed, uint64_t stream, const StreamMap& map, const Visit& visit) {
  for_each_mapped_normal_chunk(n, seed, stream, map, [&](int64_t i0, int64_t count, const float* z) {
    for (int64_t t = 0; t < count; ++t) visit(i0 + t, z[t]);
  });
}

}  // namespace cpu
}  // namespace noisefast
