// CPU kernel of noisefast_C::mix_rows: out[b] = lam * x[b] + (1 - lam) * x[index[b]] for every row b
// of x (dim 0), in one pass: each row is read twice (itself and as a partner) and written once.
// Semantics and argument conventions: noisefast/ops/mix_rows.py; per-element math:
// csrc/include/noisefast/mix_rows.h. Called by csrc/ops/mix_rows.cpp, which checks the arguments
// (the index values too) and allocates the output.
//
// x arrives sample-blocked (contiguous or channels-last: row b is memory [b*D, (b+1)*D)) and the
// output takes x's strides, so element k of a row's memory pairs with element k of its partner's.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "convert_cpu.h"
#include "multiversion_cpu.h"
#include "noisefast/math_type.h"
#include "noisefast/mix_rows.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/mix_rows.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// Elements per parallel task: big enough to amortise a task, small enough to split one large
// row (an image) over the threads.
constexpr int64_t kMixGrain = int64_t{1} << 15;
// float16/bfloat16 rows are staged in float32 blocks of this many elements (L1-resident), so that
// every loop is a plain one the compiler vectorises (see convert_cpu.h).
constexpr int64_t kMixBlock = 1024;

// o[k] = blend(a[k], p[k]) for k < n. Compiled twice (multiversion_cpu.h).
template <bool kAvx2, typename T>
NF_ALWAYS_INLINE void mix_span(const T* a, const T* p, T* o, int64_t n, double lam) {
  using acc_t = math_t<T>;
  const MixWeights<acc_t> w = mix_weights<acc_t>(lam);
  if constexpr (std::is_same<T, acc_t>::value) {
    for (int64_t k = 0; k < n; ++k) o[k] = mix_blend<acc_t>(a[k], p[k], w);
  } else {
    alignas(64) acc_t fa[kMixBlock];
    alignas(64) acc_t fp[kMixBlock];
    for (int64_t begin = 0; begin < n; begin += kMixBlock) {
      const int64_t m = std::min(kMixBlock, n - begin);
      widen<kAvx2>(a + begin, fa, m);
      widen<kAvx2>(p + begin, fp, m);
      for (int64_t k = 0; k < m; ++k) fa[k] = mix_blend<acc_t>(fa[k], fp[k], w);
      narrow<kAvx2>(fa, o + begin, m);
    }
  }
}

using MixSpanFn = void (*)(const void*, const void*, void*, int64_t, double);

template <typename T>
void mix_span_baseline(const void* a, const void* p, void* o, int64_t n, double lam) {
  mix_span<false>(static_cast<const T*>(a), static_cast<const T*>(p), static_cast<T*>(o), n, lam);
}

#if NF_CPU_MULTIVERSION
template <typename T>
NF_TARGET_AVX2 void mix_span_avx2(const void* a, const void* p, void* o, int64_t n, double lam) {
  mix_span<true>(static_cast<const T*>(a), static_cast<const T*>(p), static_cast<T*>(o), n, lam);
}
#endif

template <typename T>
MixSpanFn mix_span_fn() {
#if NF_CPU_MULTIVERSION
  if (cpu_has_avx2()) return &mix_span_avx2<T>;
#endif
  return &mix_span_baseline<T>;
}

// out (x's strides) = the blend of every row of the sample-blocked x with row idx[b]; rows >= 1,
// every idx[b] in [0, rows).
inline void mix_rows(const at::Tensor& x, const int64_t* idx_data, double lam_value, at::Tensor& out) {
  const int64_t rows = x.size(0);
  const int64_t cols = x.numel() / rows;
  MixSpanFn span = nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_rows_cpu",
                                  [&] { span = mix_span_fn<scalar_t>(); });
  const char* src = static_cast<const char*>(x.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  const int64_t item = x.element_size();
  // The rows laid end to end form one range of elements that parallel_for splits evenly, so many
  // small rows and a few large ones share the threads alike.
  at::parallel_for(0, rows * cols, kMixGrain, [&](int64_t begin, int64_t end) {
    int64_t pos = begin;
    while (pos < end) {
      const int64_t b = pos / cols;
      const int64_t k0 = pos - b * cols;
      const int64_t n = std::min(cols - k0, end - pos);
      span(src + (b * cols + k0) * item, src + (idx_data[b] * cols + k0) * item, dst + (b * cols + k0) * item, n,
           lam_value);
      pos += n;
    }
  });
}

}  // namespace
}  // namespace cpu

}  // namespace noisefast
