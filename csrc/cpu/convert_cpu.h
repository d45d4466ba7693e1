// float16 / bfloat16 <-> float32 conversion of contiguous runs, for CPU kernels that stage a block
// of low-precision data in float32 (ema_update_cpu.h, mix_rows_cpu.h). widen/narrow<kAvx2> take
// the F16C/AVX2 path when kAvx2 is true, which callers pass only inside their AVX2 copy
// (multiversion_cpu.h); plain casts otherwise. Results equal c10::Half / c10::BFloat16's
// conversions (round to nearest even; bfloat16 NaN -> 0x7FC0).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

#include "multiversion_cpu.h"

#if NF_CPU_MULTIVERSION
#include <immintrin.h>
#endif

namespace noisefast {
namespace cpu {

#if NF_CPU_MULTIVERSION
// float16 <-> float32 eight at a time with F16C (round to nearest even, as c10::Half does). Without
// CPU_CAPABILITY_AVX2 defined, c10::Half converts with scalar bit manipulation that the compiler
// does not vectorise: three times slower than the memory traffic here.
NF_TARGET_AVX2 inline void half_to_float_f16c(const c10::Half* src, float* dst, int64_t m) {
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + j))));
  }
  for (; j < m; ++j) dst[j] = static_cast<float>(src[j]);
}

NF_TARGET_AVX2 inline void float_to_half_f16c(const float* src, c10::Half* dst, int64_t m) {
  int64_t j = 0;
  for (; j + 8 <= m; j += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + j), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; j < m; ++j) dst[j] = static_cast<c10::Half>(src[j]);
}

// float32 -> bfloat16 eight at a time: c10::BFloat16's rounding (to nearest even; NaN -> 0x7FC0),
// whose scalar NaN branch keeps the compiler from vectorising it.
NF_TARGET_AVX2 inline void float_to_bfloat16_avx2(const float* src, c10::BFloat16* dst,
                                                                     int64_t m) {
  int64_t j = 0;
  const __m256i one = _mm256_set1_epi32(1), half_ulp = _mm256_set1_epi32(0x7FFF), nan = _mm256_set1_epi32(0x7FC0);
  for (; j + 8 <= m; j += 8) {
    const __m256 v = _mm256_loadu_ps(src + j);
    const __m256i bits = _mm256_castps_si256(v);
    const __m256i bias = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(bits, 16), one), half_ulp);
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
    r = _mm256_blendv_epi8(r, nan, _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)));
    // Pack the low halves of the eight 32-bit lanes (packus works per 128-bit lane: reorder qwords).
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + j), _mm256_castsi256_si128(packed));
  }
  for (; j < m; ++j) dst[j] = static_cast<c10::BFloat16>(src[j]);
}
#endif

template <bool kAvx2, typename T, typename acc_t>
NF_ALWAYS_INLINE void widen(const T* src, acc_t* dst, int64_t m) {
#if NF_CPU_MULTIVERSION
  if constexpr (kAvx2 && std::is_same<T, c10::Half>::value) return half_to_float_f16c(src, dst, m);
#endif
  for (int64_t j = 0; j < m; ++j) dst[j] = static_cast<acc_t>(src[j]);
}

template <bool kAvx2, typename T, typename acc_t>
NF_ALWAYS_INLINE void narrow(const acc_t* src, T* dst, int64_t m) {
#if NF_CPU_MULTIVERSION
  if constexpr (kAvx2 && std::is_same<T, c10::Half>::value) return float_to_half_f16c(src, dst, m);
  if constexpr (kAvx2 && std::is_same<T, c10::BFloat16>::value) return float_to_bfloat16_avx2(src, dst, m);
#endif
  for (int64_t j = 0; j < m; ++j) dst[j] = static_cast<T>(src[j]);
}

}  // namespace cpu
}  // namespace noisefast
