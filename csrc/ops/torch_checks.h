// Torch-facing helpers shared by the ops' C++ files (csrc/ops/*.cpp): the kernels' dtype codes, the
// math dtype of torch tensors, seeds, and the layout checks of the per-sample kernels. The
// user-facing checks, whose messages name the user's arguments, are in Python (noisefast/ops/) or in
// each op's file; these guard the kernels' own preconditions.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>

#include <cstdint>
#include <string>

#include "noisefast/dtype.h"
#include "noisefast/stream_map.h"

namespace noisefast {

inline bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

// The kernels' dtype code of a tensor (see dtype.h); raises for dtypes no kernel supports.
inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kFloat64;
    default: TORCH_CHECK(false, "noisefast: unsupported dtype ", t.scalar_type(),
                         " (expected float32, float16, bfloat16 or float64)");
  }
}

// The dtype kernels compute in for data of dtype `data` (noisefast/math_type.h, as a ScalarType).
inline at::ScalarType math_scalar_type(at::ScalarType data) {
  return data == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_seed(const at::Tensor& seed) {
  TORCH_CHECK(seed.scalar_type() == at::kLong && seed.numel() == 1,
              "noisefast: seed must be a one-element int64 tensor, got ", seed.scalar_type(),
              " with ", seed.numel(), " elements");
}

// The seed's value, for a CPU kernel (which reads it on the host).
inline uint64_t read_seed_on_cpu(const at::Tensor& seed) {
  check_seed(seed);
  TORCH_CHECK(seed.device().is_cpu(), "noisefast: seed must be on the CPU for a CPU kernel");
  return static_cast<uint64_t>(*seed.const_data_ptr<int64_t>());  // (item() would dispatch: ~0.2 us a call)
}

// For a CUDA kernel, which reads the seed in device memory (no host sync, CUDA-graph safe).
inline void check_seed_on(const at::Tensor& seed, const at::Tensor& like) {
  check_seed(seed);
  TORCH_CHECK(seed.device() == like.device(), "noisefast: seed is on ", seed.device(),
              " but the data is on ", like.device());
}

// An inference tensor may be written in place only inside InferenceMode (torch's in-place ops raise
// the same error); name() is the user's name of t, built only when the check fails.
template <typename Name>
inline void check_not_inference(const at::Tensor& t, const Name& name) {
  TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), name(),
              " is an inference tensor: in-place update outside InferenceMode is not allowed (clone it first, "
              "as for torch's in-place ops)");
}

inline void check_nonnegative(int64_t value, const char* name) {
  TORCH_CHECK(value >= 0, "noisefast: ", name, " must be >= 0, got ", value);
}

// The stream positions of an op's elements (noisefast/stream_map.h), checked: offset >= 0,
// segment >= 1, stride >= segment.
inline StreamMap stream_map(int64_t offset, int64_t segment, int64_t stride) {
  check_nonnegative(offset, "offset");
  TORCH_CHECK(segment >= 1, "noisefast: segment must be >= 1, got ", segment);
  TORCH_CHECK(stride >= segment, "noisefast: stride must be >= segment (", segment, "), got ", stride);
  return StreamMap{offset, segment, stride};
}

// Whether each sample (index of dim 0) of t is one dense block of memory: contiguous and
// channels-last tensors are, so per-sample kernels can read them without a copy
// (noisefast/_layout.py arranges it).
inline bool sample_blocked(const at::Tensor& t) {
  if (t.numel() == 0) return true;
  const int64_t samples = t.size(0);
  return t.is_non_overlapping_and_dense() && (samples <= 1 || t.stride(0) == t.numel() / samples);
}

// Whether a and b lay out their elements identically (strides of non-trivial dims equal), so one
// linear walk over memory pairs up the same logical elements.
inline bool same_layout(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0) return true;  // nothing is read
  for (int64_t d = 0; d < a.dim(); ++d) {
    if (a.size(d) > 1 && a.stride(d) != b.stride(d)) return false;
  }
  return true;
}

}  // namespace noisefast
