// noisefast_C::pseudo_huber_forward / pseudo_huber_backward on the CPU (semantics in
// noisefast/ops/pseudo_huber.py, math in noisefast/pseudo_huber.h).
//
// Forward: one read of input and target. Each parallel task sums the squared differences (or the
// per-element terms) of one chunk of one sample into a partial; the partials of a sample are then
// added and turned into its loss. Backward: one read of input and target, one write of each
// requested gradient; it needs only the per-sample loss and the incoming per-sample gradient.
//
// Both kernels take input and target "sample-blocked" (sample b is one dense run of D elements at
// b * D; the order inside a sample is free, so channels-last tensors need no copy) and with equal
// strides; the op layer arranges that. Gradients come out in the layout of input.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "noisefast/pseudo_huber.h"
#include "noisefast/torch_checks.h"

namespace noisefast {
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

template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

// The hot loops are compiled twice on x86: for the build's baseline (x86-64: SSE2, 4 floats per
// instruction) and for AVX2 + FMA (8 floats), the copy used where the CPU has it. The loop bodies
// are inline templates, so each copy is vectorised for its own instruction set.
#if defined(__GNUC__) && defined(__x86_64__)
#define NF_AVX2_CLONES 1
#define NF_TARGET_AVX2 __attribute__((target("avx2,fma")))
// Forced, so the loop bodies are compiled inside each clone rather than called from it.
#define NF_INLINE inline __attribute__((always_inline))
bool use_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
#define NF_AVX2_CLONES 0
#define NF_INLINE inline
bool use_avx2() { return false; }
#endif

// Sum over i < n of f(a[i] - b[i]) in the math type, lane-wise.
template <typename scalar_t, typename F>
NF_INLINE acc_type<scalar_t> lane_sum(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                      int64_t n, const F& f) {
  using acc_t = acc_type<scalar_t>;
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
NF_INLINE double chunk_sum(const scalar_t* a, const scalar_t* b, int64_t n, const F& f) {
  double total = 0;
  for (int64_t start = 0; start < n; start += kInnerElements) {
    total += static_cast<double>(lane_sum(a + start, b + start, std::min(kInnerElements, n - start), f));
  }
  return total;
}

// The forward pass over one chunk: the sum of e^2 (per sample) or of the terms (per element).
template <bool kPerSample, typename scalar_t>
NF_INLINE double forward_chunk(const scalar_t* a, const scalar_t* b, int64_t n, acc_type<scalar_t> c) {
  using acc_t = acc_type<scalar_t>;
  if (kPerSample) return chunk_sum(a, b, n, [](acc_t e) { return e * e; });
  return chunk_sum(a, b, n, [c](acc_t e) { return pseudo_huber_term(e * e, c); });
}

template <bool kPerSample, typename scalar_t>
double forward_chunk_baseline(const scalar_t* a, const scalar_t* b, int64_t n, acc_type<scalar_t> c) {
  return forward_chunk<kPerSample>(a, b, n, c);
}

#if NF_AVX2_CLONES
template <bool kPerSample, typename scalar_t>
NF_TARGET_AVX2 double forward_chunk_avx2(const scalar_t* a, const scalar_t* b, int64_t n, acc_type<scalar_t> c) {
  return forward_chunk<kPerSample>(a, b, n, c);
}
#endif

template <bool kPerSample, typename scalar_t>
double forward_chunk_best(bool avx2, const scalar_t* a, const scalar_t* b, int64_t n, acc_type<scalar_t> c) {
#if NF_AVX2_CLONES
  if (avx2) return forward_chunk_avx2<kPerSample>(a, b, n, c);
#endif
  return forward_chunk_baseline<kPerSample>(a, b, n, c);
}

void check_pair(const at::Tensor& input, const at::Tensor& target) {
  TORCH_CHECK(input.dim() >= 1, "noisefast: pseudo_huber: input needs a batch dimension");
  TORCH_CHECK(input.sizes() == target.sizes(), "noisefast: pseudo_huber: target shape ", target.sizes(),
              " differs from input shape ", input.sizes());
  TORCH_CHECK(input.scalar_type() == target.scalar_type(), "noisefast: pseudo_huber: target dtype ",
              target.scalar_type(), " differs from input dtype ", input.scalar_type());
  TORCH_CHECK(sample_blocked(input) && same_layout(input, target),
              "noisefast: pseudo_huber kernels need sample-blocked input and target with equal strides");
}

void check_per_sample(const at::Tensor& t, const at::Tensor& input, const char* what) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == input.size(0) && t.is_contiguous() &&
                  t.scalar_type() == (input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat),
              "noisefast: pseudo_huber_backward: ", what, " must be a contiguous [B] tensor in the math dtype");
}

at::Tensor pseudo_huber_forward_cpu(const at::Tensor& input, const at::Tensor& target, double c, bool per_sample) {
  check_pair(input, target);
  const at::ScalarType acc_dtype = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t samples = input.size(0);
  at::Tensor loss = at::empty({samples}, input.options().dtype(acc_dtype));
  if (samples == 0) return loss;
  const int64_t elements = input.numel() / samples;
  const SampleChunks split(samples, elements, kTaskElements);
  std::vector<double> partial(split.tasks());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pseudo_huber_forward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    const scalar_t* a = input.const_data_ptr<scalar_t>();
    const scalar_t* b = target.const_data_ptr<scalar_t>();
    const acc_t c_acc = static_cast<acc_t>(c);
    const bool avx2 = use_avx2();
    const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(elements, 1));
    at::parallel_for(0, split.tasks(), grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t offset = split.sample_of(task) * elements + split.begin_of(task);
        const int64_t n = split.end_of(task) - split.begin_of(task);
        partial[task] = per_sample ? forward_chunk_best<true>(avx2, a + offset, b + offset, n, c_acc)
                                   : forward_chunk_best<false>(avx2, a + offset, b + offset, n, c_acc);
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
  return loss;
}

// grad_input[i] = k_b * e_i (per sample, k_b = g_b / root_b) or k_b * e_i / sqrt(e_i^2 + c^2)
// (per element, k_b = g_b / D); grad_target = -grad_input.
template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
NF_INLINE void backward_run(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                            scalar_t* __restrict__ ga, scalar_t* __restrict__ gt, int64_t n, acc_type<scalar_t> k,
                            acc_type<scalar_t> c) {
  using acc_t = acc_type<scalar_t>;
  for (int64_t i = 0; i < n; ++i) {
    const acc_t e = static_cast<acc_t>(a[i]) - static_cast<acc_t>(b[i]);
    const acc_t g = kPerSample ? k * e : k * pseudo_huber_element_grad(e, c);
    if (kInput) ga[i] = static_cast<scalar_t>(g);
    if (kTarget) gt[i] = static_cast<scalar_t>(-g);
  }
}

template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
void backward_run_baseline(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, int64_t n,
                           acc_type<scalar_t> k, acc_type<scalar_t> c) {
  backward_run<kPerSample, kInput, kTarget>(a, b, ga, gt, n, k, c);
}

#if NF_AVX2_CLONES
template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
NF_TARGET_AVX2 void backward_run_avx2(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, int64_t n,
                                      acc_type<scalar_t> k, acc_type<scalar_t> c) {
  backward_run<kPerSample, kInput, kTarget>(a, b, ga, gt, n, k, c);
}
#endif

template <bool kPerSample, bool kInput, bool kTarget, typename scalar_t>
void backward_all(const scalar_t* a, const scalar_t* b, scalar_t* ga, scalar_t* gt, const acc_type<scalar_t>* grad,
                  const acc_type<scalar_t>* loss, int64_t samples, int64_t elements, acc_type<scalar_t> c) {
  using acc_t = acc_type<scalar_t>;
  const SampleChunks split(samples, elements, kTaskElements);
  const int64_t grain = std::max<int64_t>(1, kTaskElements / std::max<int64_t>(elements, 1));
  auto run = backward_run_baseline<kPerSample, kInput, kTarget, scalar_t>;
#if NF_AVX2_CLONES
  if (use_avx2()) run = backward_run_avx2<kPerSample, kInput, kTarget, scalar_t>;
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

std::tuple<at::Tensor, at::Tensor> pseudo_huber_backward_cpu(const at::Tensor& grad, const at::Tensor& input,
                                                             const at::Tensor& target, const at::Tensor& loss,
                                                             double c, bool per_sample, bool want_input,
                                                             bool want_target) {
  check_pair(input, target);
  check_per_sample(grad, input, "grad");
  check_per_sample(loss, input, "loss");
  // empty_like keeps the (dense) layout of input, so gradient element i sits where input's does.
  at::Tensor grad_input = want_input ? at::empty_like(input) : at::empty({0}, input.options());
  at::Tensor grad_target = want_target ? at::empty_like(input) : at::empty({0}, input.options());
  const int64_t samples = input.size(0);
  if (input.numel() == 0 || !(want_input || want_target)) return {grad_input, grad_target};
  const int64_t elements = input.numel() / samples;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "pseudo_huber_backward_cpu", [&] {
    using acc_t = acc_type<scalar_t>;
    backward_dispatch<scalar_t>(per_sample, want_input, want_target, input.const_data_ptr<scalar_t>(),
                                target.const_data_ptr<scalar_t>(),
                                want_input ? grad_input.data_ptr<scalar_t>() : nullptr,
                                want_target ? grad_target.data_ptr<scalar_t>() : nullptr,
                                grad.const_data_ptr<acc_t>(), loss.const_data_ptr<acc_t>(), samples, elements,
                                static_cast<acc_t>(c));
  });
  return {grad_input, grad_target};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("pseudo_huber_forward(Tensor input, Tensor target, float c, bool per_sample) -> Tensor");
  m.def("pseudo_huber_backward(Tensor grad, Tensor input, Tensor target, Tensor loss, float c, bool per_sample, "
        "bool want_input, bool want_target) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("pseudo_huber_forward", &pseudo_huber_forward_cpu);
  m.impl("pseudo_huber_backward", &pseudo_huber_backward_cpu);
}

}  // namespace noisefast
