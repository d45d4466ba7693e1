// Torch-facing C++ of noisefast_C::foreach_gaussian_noise_ (in place) and foreach_gaussian_noise
// (out of place; schemas: noisefast/ops/foreach_gaussian_noise.py): the operand checks, which name
// the user's arguments and run before anything is written, the operands' layout, and the
// registrations of the CPU kernel (csrc/cpu/foreach_gaussian_noise_cpu.h) and the CUDA kernel
// (csrc/cuda/foreach_gaussian_noise.cu). noisefast/reference/foreach_gaussian_noise.py repeats the
// checks in Python, with the same messages.
//
// foreach_gaussian_noise_(tensors, seed, stds, std_tensor): tensors[i] += std_i * z_i in place;
// foreach_gaussian_noise(tensors, seed, stds, std_tensor) -> new tensors tensors[i] + std_i * z_i.
// std_i = stds[i], or the 0-d std_tensor when given (stds then empty). z_i is the slice
// [base_i, base_i + numel_i) of normal stream kStreamNoise, base_i = sum over k < i of numel_k
// rounded up to a multiple of 4 (csrc/include/noisefast/foreach_gaussian_noise.h).
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/foreach_gaussian_noise_cpu.h"
#include "noisefast/foreach_gaussian_noise.h"
#include "shared_elements.h"
#include "torch_checks.h"
#if NOISEFAST_WITH_CUDA
#include "cuda/foreach_gaussian_noise_launcher.h"
#include "cuda_glue.h"
#endif

namespace noisefast {
namespace {

// Checks the operands (each error names the user's argument, `tensors` or `std`, and is raised
// before anything is written), lays them out and calls run(operands) once. In place (outs null):
// non-contiguous tensors are updated through a contiguous copy written back afterwards. Out of
// place: *outs receives one new contiguous tensor per input. The seed is left to the caller.
template <typename Run>
void with_operands(at::TensorList tensors, at::ArrayRef<double> stds, const std::optional<at::Tensor>& std_tensor,
                   std::vector<at::Tensor>* outs, const Run& run) {
  const bool in_place = outs == nullptr;
  const int64_t n = static_cast<int64_t>(tensors.size());
  // Small vectors: a few tensors cost no heap allocation (a per-call cost that small lists notice).
  c10::SmallVector<double, 16> host_stds(stds.begin(), stds.end());
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
    for (int64_t i = 0; i < n; ++i) check_not_inference(tensors[i], [i] { return "tensors[" + std::to_string(i) + "]"; });
    // The std tensor on the device is read by the kernel while the tensors are written.
    c10::SmallVector<at::Tensor, 16> operands(tensors.begin(), tensors.end());
    if (device_std.defined()) operands.push_back(device_std);
    check_no_shared_elements(
        operands, n, [n](int64_t i) { return i < n ? "tensors[" + std::to_string(i) + "]" : std::string("std"); },
        [n](int64_t, int64_t j) {
          return std::string(j < n ? "their common elements would receive noise twice"
                                   : "std would be read while the tensors are written");
        });
  }
  // Everything is checked: from here on nothing raises for a reason the user controls.
  std::vector<at::Tensor> keep_alive;
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (user's tensor, its contiguous copy)
  c10::SmallVector<const void*, 16> src;
  c10::SmallVector<void*, 16> dst;
  c10::SmallVector<int64_t, 16> numels;
  c10::SmallVector<uint8_t, 16> dtypes;
  c10::SmallVector<uint64_t, 16> bases;
  c10::SmallVector<double, 16> kept_stds;
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
    ForeachGaussianNoiseOperands operands;
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

void foreach_gaussian_noise_inplace_cpu(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                                        const std::optional<at::Tensor>& std_tensor) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  with_operands(tensors, stds, std_tensor, nullptr,
                [&](ForeachGaussianNoiseOperands& ops) { cpu::foreach_gaussian_noise(ops, seed_value); });
}

std::vector<at::Tensor> foreach_gaussian_noise_cpu(at::TensorList tensors, const at::Tensor& seed,
                                                   at::ArrayRef<double> stds,
                                                   const std::optional<at::Tensor>& std_tensor) {
  const uint64_t seed_value = read_seed_on_cpu(seed);
  std::vector<at::Tensor> outs;
  with_operands(tensors, stds, std_tensor, &outs,
                [&](ForeachGaussianNoiseOperands& ops) { cpu::foreach_gaussian_noise(ops, seed_value); });
  return outs;
}

#if NOISEFAST_WITH_CUDA
// The kernel reads the seed on the tensors' device (no host sync, CUDA-graph safe).
void launch_on_cuda(const at::Tensor& seed, ForeachGaussianNoiseOperands& ops) {
  ops.seed_device = seed.data_ptr<int64_t>();
  cuda::check_launch(cuda::launch_foreach_gaussian_noise(ops, cuda::current_stream()), "foreach_gaussian_noise");
}

void foreach_gaussian_noise_inplace_cuda(at::TensorList tensors, const at::Tensor& seed, at::ArrayRef<double> stds,
                                         const std::optional<at::Tensor>& std_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(cuda::device_of(tensors));
  if (!tensors.empty()) check_seed_on(seed, tensors[0]);
  with_operands(tensors, stds, std_tensor, nullptr,
                [&](ForeachGaussianNoiseOperands& ops) { launch_on_cuda(seed, ops); });
}

std::vector<at::Tensor> foreach_gaussian_noise_cuda(at::TensorList tensors, const at::Tensor& seed,
                                                    at::ArrayRef<double> stds,
                                                    const std::optional<at::Tensor>& std_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(cuda::device_of(tensors));
  if (!tensors.empty()) check_seed_on(seed, tensors[0]);
  std::vector<at::Tensor> outs;
  with_operands(tensors, stds, std_tensor, &outs,
                [&](ForeachGaussianNoiseOperands& ops) { launch_on_cuda(seed, ops); });
  return outs;
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("foreach_gaussian_noise_", &foreach_gaussian_noise_inplace_cpu);
  m.impl("foreach_gaussian_noise", &foreach_gaussian_noise_cpu);
}

#if NOISEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) {
  m.impl("foreach_gaussian_noise_", &foreach_gaussian_noise_inplace_cuda);
  m.impl("foreach_gaussian_noise", &foreach_gaussian_noise_cuda);
}
#endif

}  // namespace noisefast
