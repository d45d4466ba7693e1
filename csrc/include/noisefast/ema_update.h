// The EMA blend, one element: ema <- decay * ema + (1 - decay) * x, computed exactly as torch.lerp
// computes ema.lerp_(x, 1 - decay). The CPU kernel (g++) and the CUDA kernel (nvcc) both include
// this header, so the CPU tests exercise the arithmetic the GPU runs.
//
//   w = 1 - decay, evaluated in double and rounded once to the math type (float for float32,
//       float16 and bfloat16 shadows; double for float64): what `ema.lerp_(x, 1 - decay)` does
//       with a Python float decay.
//   d = x - ema (in the math type)
//   w <  0.5: ema + w * d        as one fused multiply-add, fma(w, d, ema)
//   w >= 0.5: x - (1 - w) * d    as one fused multiply-add, fma(w - 1, d, x)
//
// This is ATen's lerp (ATen/native/Lerp.h): the two branches keep the result exact at w = 0
// (ema unchanged) and w = 1 (ema = x), and its vectorised CPU kernel and nvcc's contraction both
// use the fused form, so results equal torch.lerp bit for bit in float32. (decay*ema + (1-decay)*x
// written naively rounds twice and is not exact at the ends.) Storage is rounded once, to nearest
// even, after the blend.
#pragma once

#include <stdint.h>

#include <cmath>

#include "noisefast/dtype.h"

#include "noisefast/host_device.h"

namespace noisefast {

// (shadow dtype, weight dtype) pairs the EMA kernels accept. A shadow has its weight's dtype, or
// is float32 for float16/bfloat16 weights (the recommended setting: a bfloat16 shadow stalls once
// (1 - decay) * |x - ema| falls below half a bfloat16 ulp of ema, i.e. for decay > ~0.996).
enum class EmaPairing : uint8_t {
  kFloat32OfFloat32 = 0,
  kFloat32OfFloat16 = 1,
  kFloat32OfBFloat16 = 2,
  kFloat16OfFloat16 = 3,
  kBFloat16OfBFloat16 = 4,
  kFloat64OfFloat64 = 5,
  kUnsupported = 255,
};

NF_HOST_DEVICE EmaPairing ema_pairing(DType shadow, DType weight) {
  if (shadow == DType::kFloat32) {
    if (weight == DType::kFloat32) return EmaPairing::kFloat32OfFloat32;
    if (weight == DType::kFloat16) return EmaPairing::kFloat32OfFloat16;
    if (weight == DType::kBFloat16) return EmaPairing::kFloat32OfBFloat16;
    return EmaPairing::kUnsupported;
  }
  if (shadow != weight) return EmaPairing::kUnsupported;
  if (shadow == DType::kFloat16) return EmaPairing::kFloat16OfFloat16;
  if (shadow == DType::kBFloat16) return EmaPairing::kBFloat16OfBFloat16;
  return EmaPairing::kFloat64OfFloat64;
}

NF_HOST_DEVICE float ema_fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

NF_HOST_DEVICE double ema_fma(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// The lerp weight of a decay: 1 - decay in double, rounded once to the math type.
template <typename acc_t>
NF_HOST_DEVICE acc_t ema_weight(double decay) {
  return static_cast<acc_t>(1.0 - decay);
}

// One element of the EMA (see the top of this file): torch.lerp(ema, x, w).
template <typename acc_t>
NF_HOST_DEVICE acc_t ema_blend(acc_t ema, acc_t x, acc_t w) {
  const acc_t d = x - ema;
  return w < acc_t(0.5) ? ema_fma(w, d, ema) : ema_fma(w - acc_t(1), d, x);
}

// The operands of one EMA update as raw pointers: what the CPU and CUDA kernels see. Built by
// the torch-facing code (with_ema_operands in csrc/ops/ema_update.cpp) from non-empty tensors whose
// shadows share their memory layout, so element k of a weight is element k of each shadow.
struct EmaOperands {
  int64_t num_tensors = 0;
  int64_t num_profiles = 0;
  const void* const* tensors = nullptr;   // [num_tensors]
  void* const* shadows = nullptr;         // [num_tensors * num_profiles]: shadow p of tensor i at i * P + p
  const int64_t* numels = nullptr;        // [num_tensors], all > 0
  const EmaPairing* pairings = nullptr;   // [num_tensors]
  const double* decays = nullptr;         // [num_profiles] on the host, or null: then decay_device
  const void* decay_device = nullptr;     // [num_profiles] float32 or float64 in device memory
  bool decay_device_is_double = false;
};

}  // namespace noisefast
