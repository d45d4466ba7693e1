// Device-side helpers shared by the CUDA kernels: conversions to and from the math type
// (noisefast/math_type.h), vector access of four elements, launch geometry, and the dtype switch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "noisefast/dtype.h"
#include "noisefast/math_type.h"

namespace noisefast {
namespace cuda {

// A stored value in its math type, and back (rounded once, to nearest even).
__device__ __forceinline__ float to_math(float v) { return v; }
__device__ __forceinline__ double to_math(double v) { return v; }
__device__ __forceinline__ float to_math(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_math(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_math(math_t<T> v);
template <> __device__ __forceinline__ float from_math<float>(float v) { return v; }
template <> __device__ __forceinline__ double from_math<double>(double v) { return v; }
template <> __device__ __forceinline__ __half from_math<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_math<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Four consecutive elements, aligned so that one instruction moves them when the address allows.
template <typename T> struct alignas(4 * sizeof(T)) Pack4 { T v[4]; };

// Whether p may be read or written as a Pack4<T>: on the host before a launch (whole tensors), or
// on the device for a chunk of one (multi_tensor_apply).
template <typename T> __host__ __device__ __forceinline__ bool is_pack4_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % sizeof(Pack4<T>) == 0;
}

constexpr int kThreadsPerBlock = 256;

// Grid for a grid-stride loop over `work` items: enough blocks to fill the GPU several times over,
// never more than the work needs.
inline unsigned grid_for(int64_t work) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t needed = (work + kThreadsPerBlock - 1) / kThreadsPerBlock;
  const int64_t cap = static_cast<int64_t>(sms) * 16;
  return static_cast<unsigned>(needed < 1 ? 1 : (needed < cap ? needed : cap));
}

}  // namespace cuda
}  // namespace noisefast

// Runs the statement with `scalar_t` bound to the device type of `dtype`.
#define NOISEFAST_DISPATCH_DTYPE(dtype, ...)                                      \
  switch (dtype) {                                                                \
    case ::noisefast::DType::kFloat32: { using scalar_t = float; __VA_ARGS__; break; }          \
    case ::noisefast::DType::kFloat16: { using scalar_t = __half; __VA_ARGS__; break; }         \
    case ::noisefast::DType::kBFloat16: { using scalar_t = __nv_bfloat16; __VA_ARGS__; break; } \
    case ::noisefast::DType::kFloat64: { using scalar_t = double; __VA_ARGS__; break; }         \
    default: return cudaErrorInvalidValue;                                        \
  }
