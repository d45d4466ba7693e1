// The portable noise stream: Philox4x32-10 and the Box-Muller transform.
//
// This header is the ONE definition of noisefast's randomness for C++ code. The CPU kernels
// (g++) and the CUDA kernels (nvcc) include it, so a CPU test exercises the same arithmetic the
// GPU runs. The Triton kernels (noisefast/triton/philox.py) and the reference
// (noisefast/reference/philox.py) implement the same definition; docs/design.md
// ("The portable noise stream") is the specification:
//
//   key     (k0, k1) = (low 32, high 32) of a 64-bit seed
//   counter (c0, c1, c2, c3) = (low 32 of q, high 32 of q, low 32 of stream, high 32 of stream)
//   element j of a draw uses Philox block q = j / 4 and its lane j % 4
//   uniform u = ((w >> 9) * 2 + 1) * 2^-24      (exact in float32, strictly inside (0, 1))
//   normals  z0 = r0 cos(2 pi u1), z1 = r0 sin(2 pi u1), z2 = r2 cos(2 pi u3), z3 = r2 sin(2 pi u3)
//            r0 = sqrt(-2 ln u0), r2 = sqrt(-2 ln u2), all in float32.
//
// Philox rounds and constants are those of Random123 (Salmon et al., SC'11), which are also the
// ones Triton's tl.philox computes, so Triton kernels can call it directly.
#pragma once

#include <stdint.h>

#if !defined(__CUDACC__)
#include <cmath>
#endif

#include "noisefast/host_device.h"

namespace noisefast {

constexpr uint32_t kPhiloxRoundA = 0xD2511F53u;  // multiplies counter word 0
constexpr uint32_t kPhiloxRoundB = 0xCD9E8D57u;  // multiplies counter word 2
constexpr uint32_t kPhiloxKeyA = 0x9E3779B9u;    // golden ratio, added to k0 after each round
constexpr uint32_t kPhiloxKeyB = 0xBB67AE85u;    // sqrt(3) - 1, added to k1 after each round
constexpr int kPhiloxRounds = 10;
constexpr int kNormalsPerBlock = 4;             // one Philox call gives four normals

struct PhiloxWords {
  uint32_t w[4];
};

struct Normal4 {
  float z[4];
};

NF_HOST_DEVICE uint32_t mul_hi_u32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// One Philox round on counter (c0..c3) with key (k0, k1), in place.
NF_HOST_DEVICE void philox_round(uint32_t& c0, uint32_t& c1, uint32_t& c2, uint32_t& c3, uint32_t k0,
                                 uint32_t k1) {
  const uint32_t hi_a = mul_hi_u32(kPhiloxRoundA, c0);
  const uint32_t lo_a = kPhiloxRoundA * c0;
  const uint32_t hi_b = mul_hi_u32(kPhiloxRoundB, c2);
  const uint32_t lo_b = kPhiloxRoundB * c2;
  c0 = hi_b ^ c1 ^ k0;
  c1 = lo_b;
  c2 = hi_a ^ c3 ^ k1;
  c3 = lo_a;
}

// Philox4x32 with ten rounds on counter (c0..c3) and key (k0, k1); the key is raised by
// (kPhiloxKeyA, kPhiloxKeyB) after each round.
NF_HOST_DEVICE PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t k0, uint32_t k1) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < kPhiloxRounds; ++round) {
    philox_round(c0, c1, c2, c3, k0, k1);
    k0 += kPhiloxKeyA;
    k1 += kPhiloxKeyB;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// The four Philox words of block q of `stream` under `seed`.
NF_HOST_DEVICE PhiloxWords philox_block(uint64_t seed, uint64_t stream, uint64_t q) {
  return philox4x32_10(static_cast<uint32_t>(q), static_cast<uint32_t>(q >> 32),
                       static_cast<uint32_t>(stream), static_cast<uint32_t>(stream >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// u = ((w >> 9) * 2 + 1) * 2^-24: the 23 high bits of w, centred in their bin. The integer is
// below 2^24, so the conversion and the power-of-two scaling are exact. (Converting through int32
// gives the same value and lets CPU loops vectorise: x86 has no unsigned-to-float instruction.)
NF_HOST_DEVICE float uniform_open01(uint32_t w) {
  return static_cast<float>(static_cast<int32_t>(((w >> 9) << 1) | 1u)) * 5.9604644775390625e-08f;  // 2^-24
}

NF_HOST_DEVICE float box_muller_radius(float u) {
#if defined(__CUDA_ARCH__)
  return sqrtf(-2.0f * logf(u));
#else
  return std::sqrt(-2.0f * std::log(u));
#endif
}

// cos and sin of theta for theta in [0, 8): Cody-Waite reduction by pi/2 (exact products for
// these small quadrant numbers), then minimax polynomials on [-pi/4, pi/4] (Cephes, S. L.
// Moshier; within 1.6 ulp of the exact values for every Box-Muller angle). No branches, so CPU
// loops over it vectorise; and no slow path for huge arguments, which in CUDA's sincosf keeps a
// local array that gave every noise kernel a stack frame. noisefast/triton/philox.py (sincos_2pi)
// computes the same, operation for operation.
NF_HOST_DEVICE void box_muller_sincos(float theta, float* c, float* s) {
  const float k = static_cast<float>(static_cast<int>(theta * 0.636619772367581343f + 0.5f));  // round(theta / (pi/2))
  const float a = ((theta - k * 1.5703125f) - k * 4.837512969970703125e-4f) - k * 7.54978995489188216e-8f;
  const float z = a * a;
  const float sin_a = a + a * z * ((-1.9515295891e-4f * z + 8.3321608736e-3f) * z - 1.6666654611e-1f);
  const float cos_a = 1.0f - 0.5f * z + z * z * ((2.443315711809948e-5f * z - 1.388731625493765e-3f) * z + 4.166664568298827e-2f);
  // (cos, sin)(a + q pi/2): odd q swaps cos and sin; cos is negated for q = 1, 2 and sin for
  // q = 2, 3. Done with bit masks so that the loop has no branches.
  const uint32_t q = static_cast<uint32_t>(static_cast<int>(k)) & 3u;
  const uint32_t swap = 0u - (q & 1u);
  const uint32_t cos_bits = bit_cast<uint32_t>(cos_a), sin_bits = bit_cast<uint32_t>(sin_a);
  const uint32_t c_bits = (sin_bits & swap) | (cos_bits & ~swap);
  const uint32_t s_bits = (cos_bits & swap) | (sin_bits & ~swap);
  *c = bit_cast<float>(c_bits ^ (((q + 1u) & 2u) << 30));
  *s = bit_cast<float>(s_bits ^ ((q & 2u) << 30));
}

NF_HOST_DEVICE void box_muller_angle(float u, float* c, float* s) {
  box_muller_sincos(6.28318548202514648f * u, c, s);  // float32(2 pi) * u
}

// Four standard normals from one Philox block (Box-Muller on lanes (0, 1) and (2, 3)).
NF_HOST_DEVICE Normal4 box_muller4(const PhiloxWords& words) {
  const float r0 = box_muller_radius(uniform_open01(words.w[0]));
  const float r2 = box_muller_radius(uniform_open01(words.w[2]));
  float c1, s1, c3, s3;
  box_muller_angle(uniform_open01(words.w[1]), &c1, &s1);
  box_muller_angle(uniform_open01(words.w[3]), &c3, &s3);
  return Normal4{{r0 * c1, r0 * s1, r2 * c3, r2 * s3}};
}

// Elements 4q .. 4q+3 of the normal stream `stream` under `seed`.
NF_HOST_DEVICE Normal4 normal4(uint64_t seed, uint64_t stream, uint64_t q) {
  return box_muller4(philox_block(seed, stream, q));
}

// Element j of the normal stream alone: the lane j % 4 of Philox block j / 4 (four times the Philox
// work per element of normal4; for kernels whose elements are not consecutive stream elements).
// The lane is selected by value, not by a runtime index into the array, which would put it on a
// CUDA thread's stack (tests/test_cuda_resources.py).
NF_HOST_DEVICE float normal_at(uint64_t seed, uint64_t stream, uint64_t j) {
  const Normal4 z = normal4(seed, stream, j / kNormalsPerBlock);
  const unsigned lane = static_cast<unsigned>(j % kNormalsPerBlock);
  return lane == 0 ? z.z[0] : lane == 1 ? z.z[1] : lane == 2 ? z.z[2] : z.z[3];
}

}  // namespace noisefast
