// The pseudo-Huber term of the consistency loss and its derivative, for C++ code on the host (g++)
// and on CUDA (nvcc). The CPU kernel (csrc/cpu/pseudo_huber_cpu.h) and any CUDA kernel include
// this header; the Triton kernels (noisefast/triton/pseudo_huber.py) and the reference
// (noisefast/reference/pseudo_huber.py) implement the same definitions.
//
// Definition (iCT, Song & Dhariwal 2023; docs/formulas.md, "Pseudo-Huber loss"): for a squared
// distance s >= 0,
//   d(s) = sqrt(s + c^2) - c,     c >= 0.
// s is ||a_b - b_b||^2 over a whole sample (per-sample form, the paper's and locuslab/ect's) or
// (a_i - b_i)^2 for one element (per-element form, Kinyugo/consistency_models, diffusers).
//
// Numerics: for s << c^2 the subtraction cancels (with c = 0.03 in float32, s = 1e-9 gives 1.68e-8
// instead of 1.67e-8 and s = 1e-11 gives 0 instead of 1.7e-10), so the term is evaluated as
// s / (sqrt(s + c^2) + c), which is exact to a few ulps for every s. Two inputs need care in
// that form: s = c = 0 (0/0; the term is 0) and s = inf (inf/inf; the term is inf). NaN stays NaN.
//
// Gradient: with root = sqrt(s + c^2), d d / d e_i = e_i / root for the differences e_i that make
// up s. root = 0 only when s = c = 0, where the subgradient 0 is used (torch's choice for the
// norm at 0). In the per-sample form root = d + c, so the backward pass needs only the saved
// per-sample loss, never the squared norm.
#pragma once

#include <math.h>

#include <limits>

#include "noisefast/host_device.h"

namespace noisefast {

NF_HOST_DEVICE float ph_sqrt(float x) { return sqrtf(x); }
NF_HOST_DEVICE double ph_sqrt(double x) { return sqrt(x); }

// sqrt(s + c^2) - c, evaluated without cancellation. T is float or double; s >= 0 (or NaN).
template <typename T>
NF_HOST_DEVICE T pseudo_huber_term(T s, T c) {
  const T denom = ph_sqrt(s + c * c) + c;
  // Divide unconditionally, then select: a division under a condition may not be speculated
  // (it could raise an FP exception), which would keep the CPU loops from vectorising.
  const T quotient = s / denom;
  return ((denom > T(0)) & (s <= std::numeric_limits<T>::max())) ? quotient : s;
}

// 1 / root for root = sqrt(s + c^2), with 0 for root = 0 (s = c = 0). NaN and inf pass through
// (1/inf = 0: a sample whose norm overflowed gets no gradient from its finite elements).
template <typename T>
NF_HOST_DEVICE T pseudo_huber_inv_root(T root) {
  const T inverse = T(1) / root;
  return root != T(0) ? inverse : T(0);
}

// d/de of the per-element term d(e^2) = sqrt(e^2 + c^2) - c.
template <typename T>
NF_HOST_DEVICE T pseudo_huber_element_grad(T e, T c) {
  return e * pseudo_huber_inv_root(ph_sqrt(e * e + c * c));
}

}  // namespace noisefast
