// NF_HOST_DEVICE: functions of the shared headers compile for the host (g++) and, under nvcc,
// for both host and device.
#pragma once

#if defined(__CUDACC__)
#define NF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NF_HOST_DEVICE inline
#endif

#include <string.h>
#if __cplusplus >= 202002L && !defined(__CUDA_ARCH__)
#include <bit>
#endif

namespace noisefast {

// std::bit_cast where the standard has it, on the host. torch 2.11 (the GPU machine's) builds
// extensions as C++17, where <bit> has no bit_cast, and device code uses memcpy too; the memcpy
// form compiles to the same register move.
template <typename To, typename From>
NF_HOST_DEVICE To bit_cast(From v) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast between types of different sizes");
#if __cplusplus >= 202002L && !defined(__CUDA_ARCH__)
  return std::bit_cast<To>(v);
#else
  To out;
  memcpy(&out, &v, sizeof(To));
  return out;
#endif
}

}  // namespace noisefast
