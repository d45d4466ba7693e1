// The portable normal stream, a chunk at a time, in loops the compiler vectorises (CPU only).
//
// noisefast/philox.h defines the stream one Philox block at a time; called per block on the CPU
// it costs ~40 ns per four normals (scalar Philox rounds, a scalar logf and sincosf), which makes a
// fused op slower than eager PyTorch. Here the same numbers are computed for up to kChunkBlocks
// blocks at once, structure of arrays:
//   - the ten Philox rounds run across the chunk (32x32->64 bit products vectorise to pmuludq),
//     bit-for-bit the words of philox.h's philox_block;
//   - the uniforms are philox.h's uniform_open01 (exact);
//   - ln u and sin/cos of theta = float32(2 pi) * u use branch-free float32 polynomials (Cephes
//     logf/sinf/cosf, Moshier 1984-1992: Cody-Waite reduction by pi/4, minimax polynomials, about
//     1 ulp), so each normal agrees with philox.h's normal4 (libm) to a few ulps, the tolerance
//     design.md grants between backends. tests/test_perturbation.py pins the agreement.
// On x86-64 an AVX2 copy is chosen at run time when the CPU has AVX2 (no FMA: contraction would
// change the rounding); other CPUs run the same code compiled for the baseline ISA.
#pragma once

#include <cstdint>
#include <cmath>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include "noisefast/philox.h"

namespace noisefast {
namespace cpu {

constexpr int kChunkBlocks = 64;  // 256 normals: the working set stays in L1

#if defined(__GNUC__)
#define NF_CPU_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define NF_CPU_ALWAYS_INLINE inline
#endif

namespace detail {

NF_CPU_ALWAYS_INLINE uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

NF_CPU_ALWAYS_INLINE float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// -2 ln u for normal u in (0, 1): Cephes logf. u = m 2^e with m in [sqrt(1/2), sqrt(2)).
NF_CPU_ALWAYS_INLINE float minus_two_log_poly(float u) {
  const uint32_t bits = float_bits(u);
  int32_t e = static_cast<int32_t>(bits >> 23) - 126;           // u = f 2^e, f in [0.5, 1)
  float f = bits_float((bits & 0x007FFFFFu) | 0x3F000000u);
  // Branch-free (the loop must vectorise): scale f by 2 where f < sqrt(1/2), exactly.
  const int32_t small = f < 0.707106781186547524f ? 1 : 0;
  e -= small;
  f = f * static_cast<float>(1 + small) - 1.0f;
  const float z = f * f;
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  const float fe = static_cast<float>(e);
  y += -2.12194440e-4f * fe;
  y += -0.5f * z;
  const float ln_u = (f + y) + 0.693359375f * fe;
  return -2.0f * ln_u;
}

// cos and sin of theta = float32(2 pi) * u, theta in (0, 2 pi): Cephes sinf/cosf.
NF_CPU_ALWAYS_INLINE void box_muller_angle_poly(float u, float* c, float* s) {
  const float theta = 6.28318548202514648f * u;
  int32_t j = static_cast<int32_t>(theta * 1.27323954473516f);  // theta / (pi/4), theta >= 0
  j += j & 1;                                                      // even octant: |r| <= pi/4
  const float y = static_cast<float>(j);
  // Cody-Waite: j <= 8 and the first constant has 8 bits, so y * DP1 is exact.
  const float r = ((theta - y * 0.78515625f) - y * 2.4187564849853515625e-4f) - y * 3.77489497744594108e-8f;
  const float z = r * r;
  const float sin_r = ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f) * z * r + r;
  const float cos_r = ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f) * z * z
                      - 0.5f * z + 1.0f;
  const uint32_t quadrant = static_cast<uint32_t>(j >> 1) & 3u;  // theta = quadrant * pi/2 + r
  // Branch-free: odd quadrants swap sin and cos; sign bits flip in quadrants 1, 2 (cos), 2, 3 (sin).
  const uint32_t swap = 0u - (quadrant & 1u);
  const uint32_t sin_bits = float_bits(sin_r), cos_bits = float_bits(cos_r);
  const uint32_t c_bits = (sin_bits & swap) | (cos_bits & ~swap);
  const uint32_t s_bits = (cos_bits & swap) | (sin_bits & ~swap);
  *c = bits_float(c_bits ^ (((quadrant ^ (quadrant >> 1)) & 1u) << 31));
  *s = bits_float(s_bits ^ ((quadrant >> 1) << 31));
}

// v = sqrt(v), correctly rounded like std::sqrt. A plain loop of std::sqrt does not vectorise
// (sqrt may set errno, a branch), so x86 uses the SSE instruction directly.
NF_CPU_ALWAYS_INLINE void sqrt_in_place(float* v, int n) {
  int k = 0;
#if defined(__SSE2__)
  for (; k + 4 <= n; k += 4) _mm_storeu_ps(v + k, _mm_sqrt_ps(_mm_loadu_ps(v + k)));
#endif
  for (; k < n; ++k) v[k] = std::sqrt(v[k]);
}

// Normals of blocks first .. first + count - 1 of the stream, element order: z[4k + lane].
NF_CPU_ALWAYS_INLINE void normal_chunk_impl(uint64_t seed, uint64_t stream, uint64_t first, int count, float* z) {
  uint32_t c0[kChunkBlocks], c1[kChunkBlocks], c2[kChunkBlocks], c3[kChunkBlocks];
  for (int k = 0; k < count; ++k) {
    const uint64_t q = first + static_cast<uint64_t>(k);
    c0[k] = static_cast<uint32_t>(q);
    c1[k] = static_cast<uint32_t>(q >> 32);
    c2[k] = static_cast<uint32_t>(stream);
    c3[k] = static_cast<uint32_t>(stream >> 32);
  }
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < kPhiloxRounds; ++round) {
    for (int k = 0; k < count; ++k) {  // philox.h's round, across the chunk
      const uint64_t a = static_cast<uint64_t>(kPhiloxRoundA) * c0[k];
      const uint64_t b = static_cast<uint64_t>(kPhiloxRoundB) * c2[k];
      const uint32_t n0 = static_cast<uint32_t>(b >> 32) ^ c1[k] ^ k0;
      const uint32_t n2 = static_cast<uint32_t>(a >> 32) ^ c3[k] ^ k1;
      c0[k] = n0;
      c1[k] = static_cast<uint32_t>(b);
      c2[k] = n2;
      c3[k] = static_cast<uint32_t>(a);
    }
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  float r0[kChunkBlocks], r2[kChunkBlocks], cos1[kChunkBlocks], sin1[kChunkBlocks], cos3[kChunkBlocks],
      sin3[kChunkBlocks];
  for (int k = 0; k < count; ++k) {
    r0[k] = minus_two_log_poly(uniform_open01(c0[k]));
    r2[k] = minus_two_log_poly(uniform_open01(c2[k]));
    box_muller_angle_poly(uniform_open01(c1[k]), &cos1[k], &sin1[k]);
    box_muller_angle_poly(uniform_open01(c3[k]), &cos3[k], &sin3[k]);
  }
  sqrt_in_place(r0, count);
  sqrt_in_place(r2, count);
  for (int k = 0; k < count; ++k) {
    z[4 * k + 0] = r0[k] * cos1[k];
    z[4 * k + 1] = r0[k] * sin1[k];
    z[4 * k + 2] = r2[k] * cos3[k];
    z[4 * k + 3] = r2[k] * sin3[k];
  }
}

#if defined(__GNUC__) && defined(__x86_64__)
__attribute__((target("avx2"))) inline void normal_chunk_avx2(uint64_t seed, uint64_t stream, uint64_t first,
                                                               int count, float* z) {
  normal_chunk_impl(seed, stream, first, count, z);
}

inline bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
#endif

inline void normal_chunk_baseline(uint64_t seed, uint64_t stream, uint64_t first, int count, float* z) {
  normal_chunk_impl(seed, stream, first, count, z);
}

}  // namespace detail

// z[0 .. 4 * count) = elements 4 * first .. 4 * (first + count) - 1 of the normal stream
// (seed, stream); count <= kChunkBlocks.
inline void normal_chunk(uint64_t seed, uint64_t stream, uint64_t first, int count, float* z) {
#if defined(__GNUC__) && defined(__x86_64__)
  if (detail::cpu_has_avx2()) return detail::normal_chunk_avx2(seed, stream, first, count, z);
#endif
  detail::normal_chunk_baseline(seed, stream, first, count, z);
}

}  // namespace cpu
}  // namespace noisefast
