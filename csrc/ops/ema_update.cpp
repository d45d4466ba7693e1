// Torch-facing C++ of noisefast_C::ema_update_ and ema_update_multi_ (schemas:
// noisefast/ops/ema_update.py): the operand checks, which name the user's arguments and run before
// anything is written, the operands' layout, and the registrations of the CPU kernel
// (csrc/cpu/ema_update_cpu.h) and the CUDA kernel (csrc/cuda/ema_update.cu).
// noisefast/reference/ema_update.py repeats the checks in Python, with the same messages.
//
// ema_update_(ema_tensors, tensors, decay, decay_tensor): ema_tensors[i] <- lerp(ema_tensors[i],
//   tensors[i], 1 - decay) for every i; decay_tensor (0-d), when given, replaces decay.
// ema_update_multi_(ema_lists, tensors, decays, decay_tensor): the same for P profiles at once,
//   ema_lists flattened profile-major (shadow p of tensor i at p * N + i); each weight is read once.
// The blend is csrc/include/noisefast/ema_update.h.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "cpu/ema_update_cpu.h"
#include "noisefast/ema_update.h"
#include "shared_elements.h"
#include "torch_checks.h"
#if NOISEFAST_WITH_CUDA
#include "cuda/ema_update_launcher.h"
#include "cuda_glue.h"
#endif

namespace noisefast {
namespace {

// The user's name of shadow p of tensor i: ema_tensors[i] or ema_lists[p][i].
std::string shadow_name(bool multi, int64_t p, int64_t i) {
  return multi ? "ema_lists[" + std::to_string(p) + "][" + std::to_string(i) + "]"
               : "ema_tensors[" + std::to_string(i) + "]";
}

// The kernels walk a weight and its shadows in memory order, which is the same element order for
// all of them when they are dense with equal strides.
bool same_dense_layout(const at::Tensor& shadow, const at::Tensor& x) {
  return x.numel() <= 1 || (shadow.is_non_overlapping_and_dense() && shadow.strides() == x.strides());
}

// Checks the operands (each error names the user's argument and is raised before anything is
// written), arranges their layout, and calls run(operands) once with raw pointers. Shadows whose
// layout the kernels cannot walk (non-dense, or strides unlike their weight's) are updated in a
// dense copy that is written back afterwards. Decays are read on the host when that needs no
// device sync (a float list; a CPU tensor) and checked to be in [0, 1]; a decay tensor on a GPU
// goes to the kernel as a pointer, unread and unchecked (safe under CUDA-graph capture).
template <typename Run>
void with_ema_operands(at::TensorList emas, at::TensorList tensors, at::ArrayRef<double> decays,
                       const std::optional<at::Tensor>& decay, bool multi, const Run& run) {
  const char* decay_name = multi ? "decays" : "decay";
  const char* shadows_name = multi ? "ema_lists" : "ema_tensors";
  int64_t profiles = static_cast<int64_t>(decays.size());
  // Small vectors: a few tensors cost no heap allocation (a per-call cost that small models notice).
  c10::SmallVector<double, 4> host_decays(decays.begin(), decays.end());
  at::Tensor device_decay;
  if (decay.has_value()) {
    const at::Tensor& d = *decay;
    TORCH_CHECK_TYPE(d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble, decay_name,
                     " must be a float32 or float64 tensor, got ", d.scalar_type());
    TORCH_CHECK_VALUE(multi ? d.dim() == 1 : d.dim() == 0, decay_name, " must be a ", multi ? "1-d" : "0-d",
                      " tensor, got shape ", d.sizes());
    profiles = d.numel();
    if (d.device().is_cpu()) {
      const at::Tensor values = d.to(at::kDouble).contiguous();
      host_decays.assign(values.data_ptr<double>(), values.data_ptr<double>() + profiles);
    } else {
      device_decay = d.contiguous();
      host_decays.clear();
    }
  }
  TORCH_CHECK_VALUE(profiles >= 1, decay_name, " must hold at least one decay");
  for (const double v : host_decays) {
    TORCH_CHECK_VALUE(v >= 0.0 && v <= 1.0, decay_name, " must be in [0, 1], got ", v);
  }
  const int64_t n = static_cast<int64_t>(tensors.size());
  TORCH_CHECK_VALUE(static_cast<int64_t>(emas.size()) == profiles * n, shadows_name, " holds ",
                    multi ? emas.size() / std::max<int64_t>(n, 1) : emas.size(), multi ? " lists" : " tensors",
                    " for ", n, " tensors", multi ? " and " + std::to_string(profiles) + " decays" : std::string());
  if (n == 0) return;
  const c10::Device device = tensors[0].device();
  if (device_decay.defined()) {
    TORCH_CHECK_VALUE(device_decay.device() == device, decay_name, " is on ", device_decay.device(),
                      " but the tensors are on ", device);
  }
  std::vector<at::Tensor> keep_alive;                          // dense copies of weights
  std::vector<std::pair<at::Tensor, at::Tensor>> write_back;  // (user's shadow, its dense copy)
  c10::SmallVector<const void*, 16> xs;
  c10::SmallVector<void*, 16> shadows;
  c10::SmallVector<int64_t, 16> numels;
  c10::SmallVector<EmaPairing, 16> pairings;
  for (int64_t i = 0; i < n; ++i) {
    const at::Tensor& x = tensors[i];
    TORCH_CHECK_TYPE(is_float_dtype(x.scalar_type()), "tensors[", i,
                     "] must be float32, float16, bfloat16 or float64, got ", x.scalar_type());
    TORCH_CHECK_VALUE(x.device() == device, "tensors[", i, "] is on ", x.device(), " but tensors[0] is on ", device);
    EmaPairing pairing = EmaPairing::kUnsupported;
    for (int64_t p = 0; p < profiles; ++p) {
      const at::Tensor& e = emas[p * n + i];
      TORCH_CHECK_VALUE(e.device() == device, shadow_name(multi, p, i), " is on ", e.device(), " but tensors[", i,
                        "] is on ", device);
      TORCH_CHECK_VALUE(e.sizes() == x.sizes(), shadow_name(multi, p, i), " has shape ", e.sizes(), " but tensors[",
                        i, "] has shape ", x.sizes());
      TORCH_CHECK_VALUE(at::has_internal_overlap(e) != at::MemOverlap::Yes, shadow_name(multi, p, i),
                        " has elements that share memory (e.g. an expanded tensor): it cannot be updated in place");
      const EmaPairing this_pairing = is_float_dtype(e.scalar_type())
          ? ema_pairing(dtype_of(e), dtype_of(x)) : EmaPairing::kUnsupported;
      TORCH_CHECK_TYPE(this_pairing != EmaPairing::kUnsupported, shadow_name(multi, p, i), " is ", e.scalar_type(),
                       " but tensors[", i, "] is ", x.scalar_type(),
                       ": a shadow must have its weight's dtype, or be float32 for float16/bfloat16 weights");
      TORCH_CHECK_VALUE(p == 0 || this_pairing == pairing, shadow_name(multi, p, i), " is ", e.scalar_type(),
                        " but ", shadow_name(multi, 0, i), " is ", emas[i].scalar_type(),
                        ": the profiles of one tensor must share a dtype");
      pairing = this_pairing;
    }
  }
  for (int64_t k = 0; k < profiles * n; ++k) {
    check_not_inference(emas[k], [&] { return shadow_name(multi, k / n, k % n); });
  }
  // A shadow listed twice (or two overlapping views) would be blended twice, and on CUDA by two
  // blocks at once: a race. A shadow that shares elements with a weight (or with the decay tensor
  // the kernel reads) would be read while it is written: results depending on sizes and threads.
  c10::SmallVector<at::Tensor, 16> operands(emas.begin(), emas.end());
  operands.insert(operands.end(), tensors.begin(), tensors.end());
  if (device_decay.defined()) operands.push_back(device_decay);
  const int64_t written = profiles * n;
  check_no_shared_elements(
      operands, written,
      [&](int64_t k) {
        if (k < written) return shadow_name(multi, k / n, k % n);
        return k < written + n ? "tensors[" + std::to_string(k - written) + "]" : std::string(decay_name);
      },
      [&](int64_t, int64_t j) {
        return std::string(j < written ? "their common elements would be updated twice"
                                       : "a shadow would be read while it is written");
      });
  // Everything is checked: from here on nothing raises for a reason the user controls.
  for (int64_t i = 0; i < n; ++i) {
    at::Tensor x = tensors[i];
    if (x.numel() == 0) continue;
    bool direct = true;
    for (int64_t p = 0; p < profiles && direct; ++p) direct = same_dense_layout(emas[p * n + i], x);
    if (!direct && !x.is_non_overlapping_and_dense()) {
      x = x.contiguous();
      keep_alive.push_back(x);
    }
    for (int64_t p = 0; p < profiles; ++p) {
      const at::Tensor& e = emas[p * n + i];
      if (same_dense_layout(e, x)) {
        shadows.push_back(e.data_ptr());
      } else {
        at::Tensor work = at::empty_like(x, e.options()).copy_(e);  // x's dense strides
        write_back.emplace_back(e, work);
        shadows.push_back(work.data_ptr());
      }
    }
    xs.push_back(x.data_ptr());
    numels.push_back(x.numel());
    pairings.push_back(ema_pairing(dtype_of(emas[i]), dtype_of(x)));
  }
  if (!xs.empty()) {
    EmaOperands operands;
    operands.num_tensors = static_cast<int64_t>(xs.size());
    operands.num_profiles = profiles;
    operands.tensors = xs.data();
    operands.shadows = shadows.data();
    operands.numels = numels.data();
    operands.pairings = pairings.data();
    operands.decays = device_decay.defined() ? nullptr : host_decays.data();
    operands.decay_device = device_decay.defined() ? device_decay.data_ptr() : nullptr;
    operands.decay_device_is_double = device_decay.defined() && device_decay.scalar_type() == at::kDouble;
    run(operands);
  }
  for (auto& [user, work] : write_back) user.copy_(work);
}

// The decays as with_ema_operands takes them: one float, unless the decay is a tensor.
at::ArrayRef<double> single_decay(const double& decay, const std::optional<at::Tensor>& decay_tensor) {
  return decay_tensor.has_value() ? at::ArrayRef<double>() : at::ArrayRef<double>(decay);
}

void check_not_both(at::ArrayRef<double> decays, const std::optional<at::Tensor>& decay_tensor) {
  TORCH_CHECK_VALUE(!decay_tensor.has_value() || decays.empty(), "pass decays as floats or as a tensor, not both");
}

void ema_update_cpu(at::TensorList ema_tensors, at::TensorList tensors, double decay,
                    const std::optional<at::Tensor>& decay_tensor) {
  with_ema_operands(ema_tensors, tensors, single_decay(decay, decay_tensor), decay_tensor, /*multi=*/false,
                    cpu::ema_update);
}

void ema_update_multi_cpu(at::TensorList ema_lists, at::TensorList tensors, at::ArrayRef<double> decays,
                          const std::optional<at::Tensor>& decay_tensor) {
  check_not_both(decays, decay_tensor);
  with_ema_operands(ema_lists, tensors, decays, decay_tensor, /*multi=*/true, cpu::ema_update);
}

#if NOISEFAST_WITH_CUDA
void launch_on_cuda(const EmaOperands& operands) {
  cuda::check_launch(cuda::launch_ema_update(operands, cuda::current_stream()), "ema_update");
}

void ema_update_cuda(at::TensorList ema_tensors, at::TensorList tensors, double decay,
                     const std::optional<at::Tensor>& decay_tensor) {
  const c10::cuda::OptionalCUDAGuard guard(cuda::device_of(tensors));
  with_ema_operands(ema_tensors, tensors, single_decay(decay, decay_tensor), decay_tensor, /*multi=*/false,
                    launch_on_cuda);
}

void ema_update_multi_cuda(at::TensorList ema_lists, at::TensorList tensors, at::ArrayRef<double> decays,
                           const std::optional<at::Tensor>& decay_tensor) {
  check_not_both(decays, decay_tensor);
  const c10::cuda::OptionalCUDAGuard guard(cuda::device_of(tensors));
  with_ema_operands(ema_lists, tensors, decays, decay_tensor, /*multi=*/true, launch_on_cuda);
}
#endif

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("ema_update_", &ema_update_cpu);
  m.impl("ema_update_multi_", &ema_update_multi_cpu);
}

#if NOISEFAST_WITH_CUDA
TORCH_LIBRARY_IMPL(noisefast_C, CUDA, m) {
  m.impl("ema_update_", &ema_update_cuda);
  m.impl("ema_update_multi_", &ema_update_multi_cuda);
}
#endif

}  // namespace noisefast
