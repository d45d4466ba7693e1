// The one way a CPU kernel compiles its hot loop twice on x86-64: for the build's baseline (x86-64:
// SSE2, 4 floats per instruction) and for AVX2 + FMA + F16C (8 floats, fused multiply-adds,
// hardware float16 conversion), the copy used where the CPU has them. Without it the extension
// would run the baseline everywhere: torch's build flags do not enable AVX2 for extensions.
//
//   template <bool kAvx2> NF_ALWAYS_INLINE void body(...);   // the loop, written once (a template on
//                                                            // kAvx2 only when it calls intrinsics)
//   void body_baseline(...) { body<false>(...); }
//   #if NF_CPU_MULTIVERSION
//   NF_TARGET_AVX2 void body_avx2(...) { body<true>(...); }
//   #endif
//   ... cpu_has_avx2() ? body_avx2 : body_baseline        (chosen once per call, outside the loop)
//
// The body is forced inline, so each wrapper compiles it for its own instruction set; kAvx2 lets
// it call intrinsics (the F16C conversions of convert_cpu.h) in the AVX2 copy only. Elsewhere
// (other architectures, other compilers) only the baseline copy exists.
#pragma once

// NF_TARGET_AVX2_NO_FMA is the same copy without fused multiply-adds, for loops whose results must
// not depend on the CPU: with FMA available the compiler contracts a * b + c into one rounding,
// which the baseline copy cannot do, and the two copies would disagree in the last bit. The noise
// stream (normal_stream_cpu.h) is compiled so: a seed gives the same normals on every x86-64 CPU.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NF_CPU_MULTIVERSION 1
#define NF_TARGET_AVX2 __attribute__((target("avx2,fma,f16c")))
#define NF_TARGET_AVX2_NO_FMA __attribute__((target("avx2")))
#else
#define NF_CPU_MULTIVERSION 0
#define NF_TARGET_AVX2
#define NF_TARGET_AVX2_NO_FMA
#endif

#if defined(__GNUC__) || defined(__clang__)
#define NF_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define NF_ALWAYS_INLINE inline
#endif

namespace noisefast {
namespace cpu {

// Whether this CPU runs the AVX2 copies: AVX2, FMA and F16C (checked once).
inline bool cpu_has_avx2() {
#if NF_CPU_MULTIVERSION
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                          __builtin_cpu_supports("f16c");
  return yes;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace noisefast
