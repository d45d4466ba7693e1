// CPU kernel of the EMA update (noisefast_C::ema_update_ and ema_update_multi_): the blend of
// csrc/include/noisefast/ema_update.h over every (weight, profile) of an EmaOperands. Called by
// csrc/ops/ema_update.cpp, which checks and lays out the operands.
//
// Parallel scheme: the tensors' elements, laid end to end, form one index range that
// at::parallel_for splits into equal pieces, so the threads share the bytes evenly however they
// are spread over tensors (hundreds of biases beside a few large matrices); a piece may span
// several tensors. One pass over all tensors; no per-tensor task overhead.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/SmallVector.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "convert_cpu.h"  // widen / narrow: float16 and bfloat16 <-> the math type
#include "multiversion_cpu.h"
#include "noisefast/ema_update.h"
#include "noisefast/math_type.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/ema_update.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// Elements per block: the weight's block is converted to the math type once and blended into every
// profile while it sits in L1 (4 KiB of float32 per staging buffer; measured on an EPYC with a
// 32 KiB L1d per core: 1024 beats 512 and 4096, by up to 1.6x for bfloat16 data).
constexpr int64_t kEmaBlock = 1024;
// Fewest elements per parallel task: below this a thread's start-up costs more than it saves.
constexpr int64_t kEmaGrain = 1 << 15;

// One span of one weight: shadow[p][offset + j] <- blend(shadow, x[offset + j], w[p]) for j < n
// and every profile p. Blocks of kEmaBlock elements: the weight is converted to the math type
// once per block, and a float16/bfloat16 shadow is widened, blended and narrowed in L1, so that
// every loop is a plain vectorisable one. Compiled twice (multiversion_cpu.h); in the AVX2 copy
// std::fma is one instruction and the conversions use F16C.
template <bool kAvx2, typename E, typename X>
NF_ALWAYS_INLINE void ema_span(void* const* shadow_ptrs, int64_t profiles, const void* x_ptr, int64_t offset, int64_t n,
                               const double* decays) {
  using acc_t = math_t<E>;
  constexpr bool kWidenX = !std::is_same<X, acc_t>::value;
  constexpr bool kWidenE = !std::is_same<E, acc_t>::value;
  const X* x = static_cast<const X*>(x_ptr) + offset;
  alignas(64) acc_t x_block[kWidenX ? kEmaBlock : 1];
  alignas(64) acc_t e_block[kWidenE ? kEmaBlock : 1];
  for (int64_t begin = 0; begin < n; begin += kEmaBlock) {
    const int64_t m = std::min(kEmaBlock, n - begin);
    const acc_t* xs = x_block;
    if constexpr (kWidenX) {
      widen<kAvx2>(x + begin, x_block, m);
    } else {
      xs = x + begin;
    }
    for (int64_t p = 0; p < profiles; ++p) {
      E* e = static_cast<E*>(shadow_ptrs[p]) + offset + begin;
      acc_t* __restrict__ es = e_block;
      if constexpr (kWidenE) {
        widen<kAvx2>(e, e_block, m);
      } else {
        es = e;
      }
      const acc_t w = ema_weight<acc_t>(decays[p]);
      // Two copies of the loop, so that each holds one fused multiply-add the compiler vectorises.
      if (w < acc_t(0.5)) {
        for (int64_t j = 0; j < m; ++j) es[j] = ema_blend<acc_t>(es[j], xs[j], w);
      } else {
        for (int64_t j = 0; j < m; ++j) es[j] = ema_blend<acc_t>(es[j], xs[j], w);
      }
      if constexpr (kWidenE) narrow<kAvx2>(e_block, e, m);
    }
  }
}

using EmaSpanFn = void (*)(void* const*, int64_t, const void*, int64_t, int64_t, const double*);

template <typename E, typename X>
void ema_span_baseline(void* const* shadows, int64_t profiles, const void* x, int64_t offset, int64_t n,
                       const double* decays) {
  ema_span<false, E, X>(shadows, profiles, x, offset, n, decays);
}

#if NF_CPU_MULTIVERSION
template <typename E, typename X>
NF_TARGET_AVX2 void ema_span_avx2(void* const* shadows, int64_t profiles, const void* x, int64_t offset, int64_t n,
                                  const double* decays) {
  ema_span<true, E, X>(shadows, profiles, x, offset, n, decays);
}
#endif

template <typename E, typename X>
EmaSpanFn ema_span_fn() {
#if NF_CPU_MULTIVERSION
  if (cpu_has_avx2()) return &ema_span_avx2<E, X>;
#endif
  return &ema_span_baseline<E, X>;
}

inline EmaSpanFn ema_span_fn(EmaPairing pairing) {
  switch (pairing) {
    case EmaPairing::kFloat32OfFloat32: return ema_span_fn<float, float>();
    case EmaPairing::kFloat32OfFloat16: return ema_span_fn<float, c10::Half>();
    case EmaPairing::kFloat32OfBFloat16: return ema_span_fn<float, c10::BFloat16>();
    case EmaPairing::kFloat16OfFloat16: return ema_span_fn<c10::Half, c10::Half>();
    case EmaPairing::kBFloat16OfBFloat16: return ema_span_fn<c10::BFloat16, c10::BFloat16>();
    case EmaPairing::kFloat64OfFloat64: return ema_span_fn<double, double>();
    default: TORCH_CHECK(false, "noisefast: unsupported EMA dtype pairing");
  }
}

// Every (weight, profile) of `ops`, the decays on the host.
inline void ema_update(const EmaOperands& ops) {
  const int64_t n = ops.num_tensors;
  const int64_t profiles = ops.num_profiles;
  c10::SmallVector<int64_t, 17> starts(n + 1, 0);  // first element of each tensor in the combined range
  c10::SmallVector<EmaSpanFn, 16> fns(n);
  for (int64_t i = 0; i < n; ++i) {
    starts[i + 1] = starts[i] + ops.numels[i];
    fns[i] = ema_span_fn(ops.pairings[i]);
  }
  at::parallel_for(0, starts[n], kEmaGrain, [&](int64_t begin, int64_t end) {
    int64_t t = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const int64_t stop = std::min(end, starts[t + 1]);
      fns[t](ops.shadows + t * profiles, profiles, ops.tensors[t], pos - starts[t], stop - pos, ops.decays);
      pos = stop;
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
