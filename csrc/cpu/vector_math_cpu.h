// float32 log and sincos written so that GCC vectorises loops over them (no libm calls, no
// branches): the CPU kernels' substitute for std::log/std::sin/std::cos, which do not vectorise.
// Coefficients are Cephes' (S. L. Moshier), accurate to about 1 ulp on the ranges used here.
// The noise stream's definition (philox.h) is unchanged: these compute the same log(u), cos(theta)
// and sin(theta) to within an ulp or two, as the CUDA libm and Triton's libdevice also do.
#pragma once

#include <cstdint>
#include <cstring>
#if __cplusplus >= 202002L
#include <bit>
#endif

namespace noisefast {
namespace cpu {

// std::bit_cast where the standard has it. torch 2.11 (the GPU machine's) builds extensions as
// C++17, where <bit> has no bit_cast; the memcpy form compiles to the same register move.
template <typename To, typename From>
inline To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
#if __cplusplus >= 202002L
  return std::bit_cast<To>(v);
#else
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
#endif
}

// Natural log of u, for u a positive normal float (here: u in (0, 1)).
inline float vlogf(float u) {
  const uint32_t bits = bit_cast<uint32_t>(u);
  int e = static_cast<int>(bits >> 23) - 126;                              // u = m * 2^e, m in [0.5, 1)
  float m = bit_cast<float>((bits & 0x007FFFFFu) | 0x3F000000u);
  const int small = m < 0.707106781186547524f;                            // keep m in [sqrt(1/2), sqrt(2))
  e -= small;
  const float x = m * static_cast<float>(1 + small) - 1.0f;              // exact (Sterbenz)
  const float z = x * x;
  float y = 7.0376836292e-2f;
  y = y * x - 1.1514610310e-1f;
  y = y * x + 1.1676998740e-1f;
  y = y * x - 1.2420140846e-1f;
  y = y * x + 1.4249322787e-1f;
  y = y * x - 1.6668057665e-1f;
  y = y * x + 2.0000714765e-1f;
  y = y * x - 2.4999993993e-1f;
  y = y * x + 3.3333331174e-1f;
  y = y * x * z;
  const float ef = static_cast<float>(e);
  y += -2.12194440e-4f * ef;                                               // ln 2 = 0.693359375 - 2.12194440e-4
  y += -0.5f * z;
  return (x + y) + 0.693359375f * ef;
}

// cos and sin of theta for theta in [0, 8): Cody-Waite reduction by pi/2 (exact products for
// these small quadrant numbers), then minimax polynomials on [-pi/4, pi/4].
inline void vsincosf(float theta, float* c, float* s) {
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

}  // namespace cpu
}  // namespace noisefast
