// noisefast_C::mix_rows on the CPU: out[b] = lam * x[b] + (1 - lam) * x[index[b]] for every row b
// of x (dim 0), in one pass: each row is read twice (itself and as a partner) and written once.
// Semantics and argument conventions: noisefast/ops/mix_rows.py; per-element math:
// csrc/include/noisefast/mix_rows.h.
//
// x arrives sample-blocked (contiguous or channels-last: row b is memory [b*D, (b+1)*D)) and the
// output takes x's strides, so element k of a row's memory pairs with element k of its partner's.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "convert_cpu.h"
#include "noisefast/mix_rows.h"
#include "noisefast/torch_checks.h"

namespace noisefast {
namespace {

// Elements per parallel task: big enough to amortise a task, small enough to split one large
// row (an image) over the threads.
constexpr int64_t kMixGrain = int64_t{1} << 15;
// float16/bfloat16 rows are staged in float32 blocks of this many elements (L1-resident), so that
// every loop is a plain one the compiler vectorises (see convert_cpu.h).
constexpr int64_t kMixBlock = 1024;

// o[k] = blend(a[k], p[k]) for k < n. Inlined into a generic and an AVX2+FMA+F16C copy.
template <typename T, bool kF16C>
__attribute__((always_inline)) inline void mix_span(const T* a, const T* p, T* o, int64_t n, double lam) {
  using acc_t = typename cpu::MathType<T>::type;
  const MixWeights<acc_t> w = mix_weights<acc_t>(lam);
  if constexpr (std::is_same<T, acc_t>::value) {
    for (int64_t k = 0; k < n; ++k) o[k] = mix_blend<acc_t>(a[k], p[k], w);
  } else {
    alignas(64) acc_t fa[kMixBlock];
    alignas(64) acc_t fp[kMixBlock];
    for (int64_t begin = 0; begin < n; begin += kMixBlock) {
      const int64_t m = std::min(kMixBlock, n - begin);
      cpu::widen<kF16C>(a + begin, fa, m);
      cpu::widen<kF16C>(p + begin, fp, m);
      for (int64_t k = 0; k < m; ++k) fa[k] = mix_blend<acc_t>(fa[k], fp[k], w);
      cpu::narrow<kF16C>(fa, o + begin, m);
    }
  }
}

using SpanFn = void (*)(const void*, const void*, void*, int64_t, double);

template <typename T>
void mix_span_generic(const void* a, const void* p, void* o, int64_t n, double lam) {
  mix_span<T, false>(static_cast<const T*>(a), static_cast<const T*>(p), static_cast<T*>(o), n, lam);
}

#if NF_CPU_X86_MULTIVERSION
template <typename T>
__attribute__((target("avx2,fma,f16c"))) void mix_span_avx2(const void* a, const void* p, void* o, int64_t n,
                                                            double lam) {
  mix_span<T, true>(static_cast<const T*>(a), static_cast<const T*>(p), static_cast<T*>(o), n, lam);
}
#endif

template <typename T>
SpanFn span_fn() {
#if NF_CPU_X86_MULTIVERSION
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  if (avx2) return &mix_span_avx2<T>;
#endif
  return &mix_span_generic<T>;
}

at::Tensor mix_rows_cpu(const at::Tensor& x, const at::Tensor& index, const at::Tensor& lam) {
  TORCH_CHECK(x.dim() >= 1, "noisefast: mix_rows: x needs a batch dimension");
  TORCH_CHECK(sample_blocked(x), "noisefast: mix_rows: the kernel needs a sample-blocked x");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.size(0) == x.size(0),
              "noisefast: mix_rows: index must be an int64 tensor of shape [", x.size(0), "], got ",
              index.scalar_type(), " of shape ", index.sizes());
  TORCH_CHECK(lam.numel() == 1 && lam.device().is_cpu() && lam.is_floating_point(),
              "noisefast: mix_rows: lam must be a one-element float tensor on the CPU");
  const double lam_value = lam.to(at::kDouble).item<double>();
  at::Tensor out = at::empty_like(x);
  const int64_t rows = x.size(0);
  if (x.numel() == 0) return out;
  const int64_t cols = x.numel() / rows;
  const at::Tensor idx = index.contiguous();
  const int64_t* idx_data = idx.data_ptr<int64_t>();
  // Checked before anything is written: a wrong partner row would read outside x.
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK_INDEX(idx_data[b] >= 0 && idx_data[b] < rows, "index[", b, "] = ", idx_data[b],
                      " is out of range for a batch of ", rows);
  }
  SpanFn span = nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "mix_rows_cpu",
                                  [&] { span = span_fn<scalar_t>(); });
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
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("mix_rows(Tensor x, Tensor index, Tensor lam) -> Tensor");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) { m.impl("mix_rows", &mix_rows_cpu); }

}  // namespace noisefast
