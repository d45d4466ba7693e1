// CPU kernels of noisefast_C::pseudo_huber_forward / pseudo_huber_backward (semantics in
// noisefast/ops/pseudo_huber.py, math in csrc/include/noisefast/pseudo_huber.h). Called by
// csrc/ops/pseudo_huber.cpp, which checks the arguments and allocates the outputs.
//
// Forward: one read of input and target. Each parallel task sums the squared differences (or the
// per-element terms) of one chunk of one sample into a partial; the partials of a sample are then
// added and turned into its loss. Backward: one read of input and target, one write of each
// requested gradient; it needs only the per-sample loss and the incoming per-sample gradient.
//
// Both kernels take input and target "sample-blocked" (sample b is one dense run of D elements at
// b * D; the order inside a sample is free, so channels-last tensors need no copy) and with equal
// strides; the op layer arranges that (noisefast/_layout.py). Gradients come out in the layout of
// input.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "multiversion_cpu.h"
#include "noisefast/math_type.h"
#include "noisefast/pseudo_huber.h"
#include "noisefast/sample_chunks.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/pseudo_huber.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

// Elements per parallel task: ~64 KiB per fp32 input, so the split costs nothing and a 1M-element
// sample still spreads over many threads.
constexpr int64_t kTaskElements = int64_t{1} << 14;
// Independent accumulators: they let the compiler keep whole SIMD registers of partial sums
// (a float reduction is not vectorised otherwise, since reordering it changes the result).
constexpr int kLanes = 16;
// Elements summed in the math type (float for 16/32-bit data) before the sum moves to double:
// each lane then adds at most 256 terms, which keeps float32 rounding error near 1e-6 relative.
constexpr int64_t kInnerElements = 4096;

// The hot loops are compiled twice (multiversion_cpu.h): the loop bodies below are forced-inline
// templates, so the baseline and the AVX2 + FMA copy each vectorise them for their own instruction set.

// Sum over i < n of f(a[i] - b[i]) in the math type, lane-wise.
template <typename scalar_t, typename F>
NF_ALWAYS_INLINE math_t<scalar_t> lane_sum(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                      int64_t n, const F& f) {
  using acc_t = math_t<scalar_t>;
  acc_t lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int l = 0; l < kLanes; ++l) {
      lanes[l] += f(static_cast<acc_t>(a[i + l]) - static_cast<acc_t>(b[i + l]));
    }
  }
  acc_t tail = 0;
  for (; i < n; ++i) tail += f(static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]));
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int l = 0; l < width; ++l) lanes[l] += lanes[l + width];
  }
  return lanes[0] + tail;
}

template <typename scalar_t, typename F>
NF_ALWAYS_INLINE double chunk_sum(const scalar_t* a, const scalar_t* b, int64_t n, const F& f) {
  double total = 0;
  for (int64_t start = 0; start < n; start += kInnerElements) {
    total += static_cast<double>(lane_sum(a + start, b + start, std::min(kInnerElements, n - start), f));
  }
  return total;
}

// The forward pass over one chunk: the sum of e^2 (per sample) or of the terms (per element).
template <bool kPerSample, typename scalar_t>
NF_ALWAYS_INLINE double forward_chunk(const scalar_t* a, const scalar_t* b, int64_t n, math_t<scalar_t> c) {
  using acc_t = math_t<scalar_t>;
  if (kPerSample) return chunk_sum(a, b, n, [](acc_t e) { return e * e; });
  return chunk_sum(a, b, n, [c](acc_t e) { return pseudo_huber_term(e * e, c); });
}

template <bool kPerSample, typename scalar_t>
double forward_chunk_baseline(const scalar_t* a, const scalar_t* b, int64_t n, math_t<scalar_t> c) {
  return forward_chunk<kPerSample>(a, b, n, c);
}

#if NF_CPU_MULTIVERSION
template <bool kPerSample, typename scalar_t>
NF_TARGET_AVX2 double forward_chunk_avx2(const scalar_t* a, const scalar_t* b, int64_t n, math_t<scalar_t> c) {
  return forward_chunk<kPerSample>(a, b, n, c);
}
#endif

template <bool kPerSample, typename scalar_t>
using ForwardChunkFn = double (*)(const scalar_t*, const scalar_t*, int64_t, math_t<scalar_t>);

template <bool kPerSample, typename scalar_t>
ForwardChunkFn<kPerSample, scalar_t> forward_chunk_fn() {
#if NF_CPU_MULTIVERSION
  if (cpu_has_avx2()) return &forward_chunk_avx2<kPerSample, scalar_t>;
#endif
  return &forward_chunk_baseline<kPerSample, scalar_t>;
}

// loss[b] (math dtype, [B]) = the per-sample loss of sample-blocked input and target with equal
// strides, B >= 1 samples.
inline void pseudo_huber_forward(const at::Tensor& input, const at::Tensor& target, double c, bool per_sample,
                                 at::Tensor& loss) {
  const int64_t samples = input.size(0);
  const int64_t elements = input.numel() / samples;
  const SampleChunks split(samples, elements, kTaskElements);
  std::vector<double> partial(split.tasks());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pseudo_huber_forward_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const scalar_t* a = input.const_data_ptr<scalar_t>();
    const scalar_t* b = target.const_data_ptr<scalar_t>();
    const acc_t c_acc = static_cast<acc_t>(c);
    const auto per_sample_chunk = forward_chunk_fn<true, scalar_t>();
    const auto per_element_chunk = forward_chunk_fn<false, scalar_t>();
    const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(elements, 1));
    at::parallel_for(0, split.tasks(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t offset = split.sample_of(task) * elements + split.begin_of(task);
        const int64_t n = split.end_of(task) - split.begin_of(task);
        partial[task] = per_sample ? per_sample_chunk(a + offset, b + offset, n, c_acc)
                                   : per_element_chunk(a + offset, b + offset, n, c_acc);
      }
    });
    acc_t* out = loss.data_ptr<acc_t>();
    for (int64_t s = 0; s < samples; ++s) {
      double total = 0;
      for (int64_t k = 0; k < split.per_sample; ++k) total += partial[s * split.per_sample + k];
      // Per element: the mean of the terms (NaN when a sample has no elements, as torch.mean).
      out[s] = static_cast<acc_t>(per_sample ? pseudo_huber_term(total, c) : total / static_cast<double>(elements));
    }
  });
}

// grad_input[i] = k_b * e_i (per sample, k_b = g_b / root_b) or k_b * e_i / sqrt(e_i^2 + c^2)
// (per element, k_b = g_b / D); grad_target = -grad_input.
template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
NF_ALWAYS_INLINE void backward_run(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                            scalar_t* __restrict__ ga, scalar_t* __restrict__ gt, int64_t n, math_t<scalar_t> k,
                            math_t<scalar_t> c) {
  using acc_t = math_t<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t e = static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]);
    const acc_t g = kPerSample ? k * e : k * pseudo_huber_element_grad(e, c);
    if (kInput) ga[i] = static_cast<scalar_t>(g);
    if (kTarget) gt[i] = static_cast<scalar_t>(-g);
  }
}

template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
void backward_run_baseline(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, int64_t n,
                           math_t<scalar_t> k, math_t<scalar_t> c) {
  backward_run<kPerSample, kInput, kTarget>(a, b, ga, gt, n, k, c);
}

#if NF_CPU_MULTIVERSION
template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
NF_TARGET_AVX2 void backward_run_avx2(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, int64_t n,
                                      math_t<scalar_t> k, math_t<scalar_t> c) {
  backward_run<kPerSample, kInput, kTarget>(a, b, ga, gt, n, k, c);
}
#endif

template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
void backward_all(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, const math_t<scalar_t>* grad,
                  const math_t<scalar_t>* loss, int64_t samples, int64_t elements, math_t<scalar_t> c) {
  using acc_t = math_t<scalar_t>;
  const SampleChunks split(samples, elements, kTaskElements);
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(elements, 1));
  auto run = backward_run_baseline<kPerSample, kInput, kTarget, scalar_t>;
#if NF_CPU_MULTIVERSION
  if (cpu_has_avx2()) run = backward_run_avx2<kPerSample, kInput, kTarget, scalar_t>;
#endif
  at::parallel_for(0, split.tasks(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = split.sample_of(task);
      const int64_t offset = s * elements + split.begin_of(task);
      const acc_t k = kPerSample ? grad[s] * pseudo_huber_inv_root(loss[s] + c)
                                 : grad[s] / static_cast<acc_t>(elements);
      run(a + offset, b + offset, kInput ? ga + offset : nullptr, kTarget ? gt + offset : nullptr,
          split.end_of(task) - split.begin_of(task), k, c);
    }
  });
}

template <typename scalar_t, typename... Args>
void backward_dispatch(bool per_sample, bool want_input, bool want_target, Args... args) {
  // Only the combinations the op layer issues: at least one gradient is requested.
  if (per_sample) {
    if (want_input && want_target) backward_all<true, true, true, scalar_t>(args...);
    else if (want_input) backward_all<true, true, false, scalar_t>(args...);
    else backward_all<true, false, true, scalar_t>(args...);
  } else {
    if (want_input && want_target) backward_all<false, true, true, scalar_t>(args...);
    else if (want_input) backward_all<false, true, false, scalar_t>(args...);
    else backward_all<false, false, true, scalar_t>(args...);
  }
}

// grad_input and grad_target (input's layout; each defined only when wanted, at least one is) from
// the per-sample incoming gradient and loss ([B], math dtype); input has elements.
inline void pseudo_huber_backward(const at::Tensor& grad, const at::Tensor& input, const at::Tensor& target,
                                  const at::Tensor& loss, double c, bool per_sample, at::Tensor& grad_input,
                                  at::Tensor& grad_target) {
  const bool want_input = grad_input.defined(), want_target = grad_target.defined();
  const int64_t samples = input.size(0);
  const int64_t elements = input.numel() / samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pseudo_huber_backward_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    backward_dispatch<scalar_t>(per_sample, want_input, want_target, input.const_data_ptr<scalar_t>(),
                                target.const_data_ptr<scalar_t>(),
                                want_input ? grad_input.data_ptr<scalar_t>() : nullptr,
                                want_target ? grad_target.data_ptr<scalar_t>() : nullptr,
                                grad.const_data_ptr<acc_t>(), loss.const_data_ptr<acc_t>(), samples, elements,
                                static_cast<acc_t>(c));
  });
}

}  // namespace
}  // namespace cpu
}  // namespace noisefast
