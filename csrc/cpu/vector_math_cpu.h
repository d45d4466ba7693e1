// float32 log written so that GCC vectorises loops over it (no libm call, no branches): the CPU
// kernels' substitute for std::log, which does not vectorise. Coefficients are Cephes' (S. L.
// Moshier), accurate to about 1 ulp on the range used here. (The Box-Muller sine and cosine,
// vectorisable the same way, are in philox.h, shared with the CUDA kernels.) The noise stream's
// definition (philox.h) is unchanged: this computes the same log(u) to within an ulp or two, as
// the CUDA libm and Triton's libdevice also do.
#pragma once

#include <cstdint>

#include "noisefast/host_device.h"  // bit_cast

namespace noisefast {
namespace cpu {

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

}  // namespace cpu
}  // namespace noisefast
