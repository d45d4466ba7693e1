// CPU kernels of noisefast_C::consistency_output_forward / consistency_output_backward (semantics in
// noisefast/ops/consistency_output.py):
//   out = c_skip(sigma_b) * x + c_out(sigma_b) * raw,
//   c_skip = sd^2 / ((sigma - sigma_min)^2 + sd^2),  c_out = sd (sigma - sigma_min) / sqrt(sigma^2 + sd^2)
// (iCT, Song & Dhariwal 2023; docs/formulas.md). sigma is [S] in the math dtype, S = 1 (one sigma
// for the batch) or S = B. raw, x (and grad in backward) arrive sample-blocked with equal strides,
// so sample b is memory [b*D, (b+1)*D) and the output takes raw's layout. Called by
// csrc/ops/consistency_output.cpp, which checks the arguments and allocates the outputs.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "noisefast/math_type.h"
#include "noisefast/sample_chunks.h"

namespace noisefast {
namespace cpu {
// Internal to the translation unit of csrc/ops/consistency_output.cpp, the one file that includes this header:
// the compiler inlines as freely as when each kernel file was compiled on its own.
namespace {

constexpr int64_t kTaskElements = int64_t{1} << 14;

template <typename acc_t>
struct Scalings {
  acc_t skip, out;
};

// At sigma = sigma_min: c_skip = sd^2 / sd^2 = 1 and c_out = 0 exactly, so f(x, sigma_min) = x.
template <typename acc_t>
Scalings<acc_t> scalings(acc_t sigma, acc_t sd, acc_t sigma_min) {
  const acc_t shifted = sigma - sigma_min;
  return {sd * sd / (shifted * shifted + sd * sd), sd * shifted / std::sqrt(sigma * sigma + sd * sd)};
}

// d c_skip / d sigma and d c_out / d sigma.
template <typename acc_t>
Scalings<acc_t> scalings_grad(acc_t sigma, acc_t sd, acc_t sigma_min) {
  const acc_t shifted = sigma - sigma_min;
  const acc_t skip_denom = shifted * shifted + sd * sd;
  const acc_t norm2 = sigma * sigma + sd * sd;
  return {-2 * sd * sd * shifted / (skip_denom * skip_denom),
          sd * (sd * sd + sigma_min * sigma) / (norm2 * std::sqrt(norm2))};
}

// body(task, k, offset, n) for every task of split, in parallel: k are the scalings of the task's
// sample, [offset, offset + n) its elements.
template <typename acc_t, typename Body>
void for_each_task(const SampleChunks& split, int64_t elements, const acc_t* sig, bool shared, acc_t sd,
                   acc_t sigma_min, const Body& body) {
  const int64_t grain = std::max<int64_t>(1, kTaskElements / elements);
  at::parallel_for(0, split.tasks(), grain, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = split.sample_of(task);
      body(task, scalings(sig[shared ? 0 : s], sd, sigma_min), s * elements + split.begin_of(task),
           split.end_of(task) - split.begin_of(task));
    }
  });
}

// out = c_skip(sigma) x + c_out(sigma) raw for raw with elements.
inline void consistency_output_forward(const at::Tensor& raw, const at::Tensor& x, const at::Tensor& sigma,
                                       double sigma_data, double sigma_min, at::Tensor& out) {
  const int64_t samples = raw.size(0);
  const int64_t elements = raw.numel() / samples;
  const SampleChunks split(samples, elements, kTaskElements);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "consistency_output_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const scalar_t* r = raw.const_data_ptr<scalar_t>();
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    const acc_t* sig = sigma.const_data_ptr<acc_t>();
    const bool shared = sigma.size(0) == 1;
    const acc_t sd = static_cast<acc_t>(sigma_data), m = static_cast<acc_t>(sigma_min);
    for_each_task(split, elements, sig, shared, sd, m, [&](int64_t, Scalings<acc_t> k, int64_t offset, int64_t n) {
      const scalar_t* __restrict__ rr = r + offset;
      const scalar_t* __restrict__ xx = xs + offset;
      scalar_t* __restrict__ oo = o + offset;
      for (int64_t i = 0; i < n; ++i) {
        oo[i] = static_cast<scalar_t>(k.skip * static_cast<acc_t>(xx[i]) + k.out * static_cast<acc_t>(rr[i]));
      }
    });
  });
}

// grad_raw = c_out * g, grad_x = c_skip * g, and per task the sums of g*x and g*raw that the sigma
// gradient needs (written to sums[2 * task], sums[2 * task + 1]).
template <bool kRaw, bool kX, bool kSigma, typename scalar_t>
void backward_run(const scalar_t* __restrict__ g, const scalar_t* __restrict__ r, const scalar_t* __restrict__ xs,
                  scalar_t* __restrict__ gr, scalar_t* __restrict__ gx, int64_t n,
                  Scalings<math_t<scalar_t>> k, double* sums) {
  using acc_t = math_t<scalar_t>;
  // Independent lanes keep the sums vectorisable; 4096-element blocks move to double (as in
  // pseudo_huber_cpu.h) so the float rounding error stays ~1e-6 relative.
  constexpr int kLanes = 8;
  constexpr int64_t kInner = 4096;
  double sum_gx = 0, sum_gr = 0;
  for (int64_t start = 0; start < n; start += kInner) {
    const int64_t stop = std::min(n, start + kInner);
    acc_t lanes_gx[kLanes] = {}, lanes_gr[kLanes] = {};
    auto body = [&](int64_t i, int lane) {
      const acc_t gi = static_cast<acc_t>(g[i]);
      if (kRaw) gr[i] = static_cast<scalar_t>(k.out * gi);
      if (kX) gx[i] = static_cast<scalar_t>(k.skip * gi);
      if (kSigma) {
        lanes_gx[lane] += gi * static_cast<acc_t>(xs[i]);
        lanes_gr[lane] += gi * static_cast<acc_t>(r[i]);
      }
    };
    int64_t i = start;
    for (; i + kLanes <= stop; i += kLanes) {
      for (int l = 0; l < kLanes; ++l) body(i + l, l);
    }
    for (; i < stop; ++i) body(i, 0);
    if (kSigma) {
      for (int l = 0; l < kLanes; ++l) {
        sum_gx += static_cast<double>(lanes_gx[l]);
        sum_gr += static_cast<double>(lanes_gr[l]);
      }
    }
  }
  if (kSigma) {
    sums[0] = sum_gx;
    sums[1] = sum_gr;
  }
}

// grad_raw = c_out g, grad_x = c_skip g and grad_sigma (zero-filled, [S]) += the sigma gradient,
// each computed only when wanted, for raw with elements.
inline void consistency_output_backward(const at::Tensor& grad, const at::Tensor& raw, const at::Tensor& x,
                                        const at::Tensor& sigma, double sigma_data, double sigma_min, bool want_raw,
                                        bool want_x, bool want_sigma, at::Tensor& grad_raw, at::Tensor& grad_x,
                                        at::Tensor& grad_sigma) {
  const int64_t samples = raw.size(0);
  const int64_t elements = raw.numel() / samples;
  const SampleChunks split(samples, elements, kTaskElements);
  std::vector<double> sums(want_sigma ? 2 * split.tasks() : 0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, raw.scalar_type(), "consistency_output_backward_cpu", [&] {
    using acc_t = math_t<scalar_t>;
    const scalar_t* g = grad.const_data_ptr<scalar_t>();
    const scalar_t* r = raw.const_data_ptr<scalar_t>();
    const scalar_t* xs = x.const_data_ptr<scalar_t>();
    scalar_t* gr = want_raw ? grad_raw.data_ptr<scalar_t>() : nullptr;
    scalar_t* gx = want_x ? grad_x.data_ptr<scalar_t>() : nullptr;
    const acc_t* sig = sigma.const_data_ptr<acc_t>();
    const bool shared = sigma.size(0) == 1;
    const acc_t sd = static_cast<acc_t>(sigma_data), m = static_cast<acc_t>(sigma_min);
    for_each_task(split, elements, sig, shared, sd, m, [&](int64_t task, Scalings<acc_t> k, int64_t offset, int64_t n) {
      double* task_sums = want_sigma ? sums.data() + 2 * task : nullptr;
      const scalar_t* gg = g + offset;
      const scalar_t* rr = r + offset;
      const scalar_t* xx = xs + offset;
      scalar_t* gro = want_raw ? gr + offset : nullptr;
      scalar_t* gxo = want_x ? gx + offset : nullptr;
      // The eight combinations of wanted gradients, each compiled without branches inside.
      const int which = (want_raw ? 4 : 0) | (want_x ? 2 : 0) | (want_sigma ? 1 : 0);
      switch (which) {
        case 1: backward_run<false, false, true>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        case 2: backward_run<false, true, false>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        case 3: backward_run<false, true, true>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        case 4: backward_run<true, false, false>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        case 5: backward_run<true, false, true>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        case 6: backward_run<true, true, false>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
        default: backward_run<true, true, true>(gg, rr, xx, gro, gxo, n, k, task_sums); break;
      }
    });
    if (want_sigma) {
      acc_t* out = grad_sigma.data_ptr<acc_t>();
      double shared_total = 0;  // one sigma for the batch: its gradient adds over the samples
      for (int64_t s = 0; s < samples; ++s) {
        double sum_gx = 0, sum_gr = 0;
        for (int64_t c = 0; c < split.per_sample; ++c) {
          sum_gx += sums[2 * (s * split.per_sample + c)];
          sum_gr += sums[2 * (s * split.per_sample + c) + 1];
        }
        const Scalings<acc_t> dk = scalings_grad(sig[shared ? 0 : s], sd, m);
        const double value = static_cast<double>(dk.skip) * sum_gx + static_cast<double>(dk.out) * sum_gr;
        if (shared) shared_total += value;
        else out[s] = static_cast<acc_t>(value);
      }
      if (shared) out[0] = static_cast<acc_t>(shared_total);
    }
  });
}

}  // namespace
}  // namespace cpu

}  // namespace noisefast
