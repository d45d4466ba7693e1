// noisefast_C::add_noise_ and noisefast_C::noisy_copies on the CPU, and the torch-facing
// preparation of their operands that the CUDA glue (csrc/cuda/add_noise_glue.cpp) shares.
//
// add_noise_(tensors, seed, stds, std_tensor): tensors[i] += std_i * z_i in place;
// noisy_copies(tensors, seed, stds, std_tensor) -> new tensors tensors[i] + std_i * z_i.
// std_i = stds[i], or the 0-d std_tensor when given (stds then empty). z_i is the slice
// [base_i, base_i + numel_i) of normal stream kStreamNoise, base_i = sum over k < i of numel_k
// rounded up to a multiple of 4 (csrc/include/noisefast/add_noise.h); the per-element maths is
// csrc/include/noisefast/noise.h, the one gaussian_noise uses. noisefast/ops/list_noise.py is the
// Python face, noisefast/reference/list_noise.py the specification.
//
// Parallel scheme: the tensors' stream slices, laid end to end, form one range of Philox blocks
// that for_each_normal_chunk (normal_stream_cpu.h) splits over the threads; each chunk of normals
// is applied to the tensors it overlaps. One parallel pass whatever the dtypes and sizes.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "noisefast/add_noise.h"
#include "noisefast/add_noise_operands.h"
#include "noisefast/noise.h"
#include "noisefast/shared_elements.h"
#include "noisefast/streams.h"
#include "noisefast/torch_checks.h"
#include "normal_stream_cpu.h"

namespace noisefast {

namespace {

bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

}  // namespace

void with_add_noise_operands(at::TensorList tensors, at::ArrayRef<double> stds,
                             const std::optional<at::Tensor>& std_tensor, std::vector<at::Tensor>* outs,
                             const std::function<void(AddNoiseOperands&)>& run) {
  const bool in_place = outs == nullptr;
  const int64_t n = static_cast<int64_t>(tensors.size());
  std::vector<double> host_stds(stds.begin(), stds.end());
  at::Tensor device_std;
  if (std_tensor.has_value()) {
    const at::Tensor& s = *std_tensor;
    TORCH_CHECK_VALUE(stds.empty(), "pass std as numbers or as a tensor, not both");
    TORCH_CHECK_TYPE(s.scalar_type() == at::kFloat || s.scalar_type() == at::kDouble,
                     "std must be a float32 or float64 tensor, got ", s.scalar_type());
    TORCH_CHECK_VALUE(s.dim() == 0, "std must be a 0-d tensor, got shape ", s.sizes());
    if (s.device().is_cpu()) {
      host_stds.assign(n, s.item<double>());
    } else {
      TORCH_CHECK_VALUE(n == 0 || s.device() == tensors[0].device(), "std is on ", s.device(),
                        " but the tensors are on ", tensors[0].device());
      device_std = s;
    }
  } else {
    TORCH_CHECK_VALUE(static_cast<int64_t>(stds.size()) == n, "std has ", stds.size(), " values for ", n,
                      " tensors");
  }
  for (size_t i = 0; i < host_stds.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(host_stds[i]) && host_stds[i] >= 0.0, "std must be finite and >= 0, got ",
                      host_stds[i], std_tensor.has_value() ? std::string() : " for tensors[" + std::to_string(i) + "]");
  }
  if (n == 0) return;
  const c10::Device device = tensors[0].device();
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    TORCH_CHECK_TYPE(t.layout() == at::kStrided, "tensors[", i, "] must be a dense (strided) tensor, got ",
                     t.layout());
    TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), "tensors[", i,
                     "] must be float32, float16, bfloat16 or float64, got ", t.scalar_type());
    TORCH_CHECK_VALUE(t.device() == device, "tensors[", i, "] is on ", t.device(), " but tensors[0] is on ", device);
    if (in_place) {
      TORCH_CHECK_VALUE(at::has_internal_overlap(t) != at::MemOverlap::Yes, "tensors[", i,
                        "] has elements that share memory (e.g. an expanded tensor): it cannot be updated in place");
    }
  }
  if (in_place) {
    check_no_shared_elements(tensors, [](int64_t i) { return "tensors[" + std::to_string(i) + "]"; },
                             "their common elements would receive noise twice");
  }
  // Everything is checked: from here on nothing raises for a reason the user controls.
  std::vector<at::Tensor> keep_alive;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (user's tensor, its contiguous copy)
  std::vector<const void*> src;
  std::vector<void*> dst;
  std::vector<int64_t> numels;
  std::vector<uint8_t> dtypes;
  std::vector<uint64_t> bases;
  std::vector<double> kept_stds;
  if (!in_place) outs->clear();
  uint64_t base = 0;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& t = tensors[i];
    at::Tensor input = t.contiguous();
    at::Tensor output;
    if (in_place) {
      output = input;
      if (!t.is_contiguous()) write_back.emplace_back(t, input);
    } else {
      output = at::empty_like(input, at::MemoryFormat::Contiguous);
      outs->push_back(output);
      keep_alive.push_back(input);
    }
    if (t.numel() > 0) {
      src.push_back(input.data_ptr());
      dst.push_back(output.data_ptr());
      numels.push_back(t.numel());
      dtypes.push_back(static_cast<uint8_t>(dtype_of(t)));
      bases.push_back(base);
      if (!device_std.defined()) kept_stds.push_back(host_stds[i]);
    }
    base += stream_span(t.numel());
  }
  if (!src.empty()) {
    AddNoiseOperands operands;
    operands.num_tensors = static_cast<int64_t>(src.size());
    operands.src = src.data();
    operands.dst = dst.data();
    operands.numels = numels.data();
    operands.dtypes = dtypes.data();
    operands.bases = bases.data();
    operands.stds = device_std.defined() ? nullptr : kept_stds.data();
    operands.std_device = device_std.defined() ? device_std.data_ptr() : nullptr;
    operands.std_device_is_double = device_std.defined() && device_std.scalar_type() == at::kDouble;
    run(operands);
  }
  for (auto& [user, work] : write_back) user.copy_(work);
}

namespace cpu {
namespace {

// Elements [from, from + count) of one tensor with normals z[0 .. count).
template <typename scalar_t>
void add_noise_span(const void* src_ptr, void* dst_ptr, int64_t from, int64_t count, double std, const float* z) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* src = static_cast<const scalar_t*>(src_ptr) + from;
  scalar_t* dst = static_cast<scalar_t*>(dst_ptr) + from;
  const acc_t sigma = static_cast<acc_t>(std);
  if (sigma == acc_t(0)) {  // untouched, bit for bit (x + 0 * z would turn -0.0 into +0.0)
    if (src != dst) std::memcpy(dst, src, static_cast<size_t>(count) * sizeof(scalar_t));
    return;
  }
  for (int64_t k = 0; k < count; ++k) {
    dst[k] = static_cast<scalar_t>(add_scaled_normal<acc_t>(static_cast<acc_t>(src[k]), sigma, z[k]));
  }
}

using SpanFn = void (*)(const void*, void*, int64_t, int64_t, double, const float*);

SpanFn span_fn(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return &add_noise_span<float>;
    case DType::kFloat16: return &add_noise_span<c10::Half>;
    case DType::kBFloat16: return &add_noise_span<c10::BFloat16>;
    case DType::kFloat64: return &add_noise_span<double>;
  }
  TORCH_CHECK(false, "noisefast: unsupported dtype in add_noise_");
}

void add_noise_kernel(const AddNoiseOperands& ops, uint64_t seed) {
  const int64_t n = ops.num_tensors;
  std::vector<SpanFn> fns(n);
  for (int64_t i = 0; i < n; ++i) fns[i] = span_fn(static_cast<DType>(ops.dtypes[i]));
  const uint64_t* bases = ops.bases;
  const int64_t total = static_cast<int64_t>(bases[n - 1] + stream_span(ops.numels[n - 1]));
  for_each_normal_chunk(total, seed, kStreamNoise, 0, [&](int64_t i0, int64_t count, const float* z) {
    const uint64_t begin = static_cast<uint64_t>(i0), end = begin + static_cast<uint64_t>(count);
    int64_t t = std::upper_bound(bases, bases + n, begin) - bases - 1;
    for (; t < n && bases[t] < end; ++t) {
      const uint64_t from = std::max(begin, bases[t]);
      const uint64_t to = std::min(end, bases[t] + static_cast<uint64_t>(ops.numels[t]));
      if (to <= from) continue;  // this chunk holds only the padding of tensor t's last block
      fns[t](ops.src[t], ops.dst[t], static_cast<int64_t>(from - bases[t]), static_cast<int64_t>(to - from),
             ops.stds[t], z + (from - begin));
    }
  });
}

void add_noise_cpu(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                   const std::optional<at::Tensor>& std_tensor) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  with_add_noise_operands(tensors, stds, std_tensor, nullptr,
                          [&](AddNoiseOperands& ops) { add_noise_kernel(ops, seed_value); });
}

std::vector<at::Tensor> noisy_copies_cpu(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                                         const std::optional<at::Tensor>& std_tensor) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  std::vector<at::Tensor> outs;
  with_add_noise_operands(tensors, stds, std_tensor, &outs,
                          [&](AddNoiseOperands& ops) { add_noise_kernel(ops, seed_value); });
  return outs;
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("add_noise_(Tensor(a!)[] tensors, Tensor seed, float[] stds, Tensor? std_tensor) -> ()");
  m.def("noisy_copies(Tensor[] tensors, Tensor seed, float[] stds, Tensor? std_tensor) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("add_noise_", &cpu::add_noise_cpu);
  m.impl("noisy_copies", &cpu::noisy_copies_cpu);
}

}  // namespace noisefast
