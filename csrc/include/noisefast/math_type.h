// The math type: what a kernel computes in for data stored as T. float for float32, float16 and
// bfloat16 storage (c10::Half / c10::BFloat16 on the CPU, __half / __nv_bfloat16 on CUDA); double
// for float64. A kernel converts on load, computes in the math type and rounds once on store.
// The same rule in Python is noisefast._dtypes.math_dtype, and for torch dtypes in C++
// math_scalar_type (csrc/ops/torch_checks.h). Local aliases call it acc_t.
#pragma once

namespace noisefast {

template <typename T> struct MathType { using type = float; };
template <> struct MathType<double> { using type = double; };

template <typename T> using math_t = typename MathType<T>::type;

}  // namespace noisefast
