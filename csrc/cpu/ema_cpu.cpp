// noisefast_C::ema_update and noisefast_C::ema_update_multi on the CPU, and the torch-facing
// preparation of their operands that the CUDA glue (csrc/cuda/ema_glue.cpp) shares.
//
// ema_update(ema_tensors, tensors, decay, decay_tensor): ema_tensors[i] <- lerp(ema_tensors[i],
//   tensors[i], 1 - decay) for every i; decay_tensor (0-d), when given, replaces decay.
// ema_update_multi(ema_lists, tensors, decays, decay_tensor): the same for P profiles at once,
//   ema_lists flattened profile-major (shadow p of tensor i at p * N + i); each weight is read once.
// The blend is csrc/include/noisefast/ema.h. noisefast/ops/ema_update.py is the Python face.
//
// Parallel scheme: the tensors' elements, laid end to end, form one index range that
// at::parallel_for splits into equal pieces, so the threads share the bytes evenly however they
// are spread over tensors (hundreds of biases beside a few large matrices); a piece may span
// several tensors. One pass over all tensors; no per-tensor task overhead.
#include <ATen/ATen.h>
#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "noisefast/ema.h"
#include "noisefast/ema_operands.h"
#include "noisefast/shared_elements.h"
#include "noisefast/torch_checks.h"
#include "convert_cpu.h"  // widen / narrow: float16 and bfloat16 <-> the math type

#define NF_EMA_X86_MULTIVERSION NF_CPU_X86_MULTIVERSION

namespace noisefast {

namespace {

bool is_float_dtype(at::ScalarType s) {
  return s == at::kFloat || s == at::kHalf || s == at::kBFloat16 || s == at::kDouble;
}

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

}  // namespace

// Checks the operands (each error names the user's argument and is raised before anything is
// written), arranges their layout, and calls run(operands) once with raw pointers. Shadows whose
// layout the kernels cannot walk (non-dense, or strides unlike their weight's) are updated in a
// dense copy that is written back afterwards. Decays are read on the host when that needs no
// device sync (a float list; a CPU tensor) and checked to be in [0, 1]; a decay tensor on a GPU
// goes to the kernel as a pointer, unread and unchecked (safe under CUDA-graph capture).
void with_ema_operands(at::TensorList emas, at::TensorList tensors, at::ArrayRef<double> decays,
                       const std::optional<at::Tensor>& decay, bool multi,
                       const std::function<void(const EmaOperands&)>& run) {
  const char* decay_name = multi ? "decays" : "decay";
  const char* shadows_name = multi ? "ema_lists" : "ema_tensors";
  int64_t profiles = static_cast<int64_t>(decays.size());
  std::vector<double> host_decays(decays.begin(), decays.end());
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
  std::vector<const void*> xs;
  std::vector<void*> shadows;
  std::vector<int64_t> numels;
  std::vector<EmaPairing> pairings;
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
  // A shadow listed twice (or two overlapping views) would be blended twice, and on CUDA by two
  // blocks at once: a race.
  check_no_shared_elements(emas, [&](int64_t k) { return shadow_name(multi, k / n, k % n); },
                           "their common elements would be updated twice");
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

namespace cpu {
namespace {

// Elements per block: the weight's block is converted to the math type once and blended into every
// profile while it sits in L1 (4 KiB of float32 per staging buffer; measured on an EPYC with a
// 32 KiB L1d per core: 1024 beats 512 and 4096, by up to 1.6x for bfloat16 data).
constexpr int64_t kEmaBlock = 1024;
// Fewest elements per parallel task: below this a thread's start-up costs more than it saves.
constexpr int64_t kEmaGrain = 1 << 15;

// One span of one weight: shadow[p][offset + j] <- blend(shadow, x[offset + j], w[p]) for j < n
// and every profile p. Blocks of kEmaBlock elements: the weight is converted to the math type
// once per block, and a float16/bfloat16 shadow is widened, blended and narrowed in L1, so that
// every loop is a plain vectorisable one. Inlined into a generic and an AVX2+FMA+F16C copy (the
// second with kF16C); in it std::fma is one instruction.
template <typename E, typename X, bool kF16C>
__attribute__((always_inline)) inline void ema_span(void* const* shadow_ptrs, int64_t profiles, const void* x_ptr,
                                                    int64_t offset, int64_t n, const double* decays) {
  using acc_t = typename MathType<E>::type;
  constexpr bool kWidenX = !std::is_same<X, acc_t>::value;
  constexpr bool kWidenE = !std::is_same<E, acc_t>::value;
  const X* x = static_cast<const X*>(x_ptr) + offset;
  alignas(64) acc_t x_block[kWidenX ? kEmaBlock : 1];
  alignas(64) acc_t e_block[kWidenE ? kEmaBlock : 1];
  for (int64_t begin = 0; begin < n; begin += kEmaBlock) {
    const int64_t m = std::min(kEmaBlock, n - begin);
    const acc_t* xs = x_block;
    if constexpr (kWidenX) {
      widen<kF16C>(x + begin, x_block, m);
    } else {
      xs = x + begin;
    }
    for (int64_t p = 0; p < profiles; ++p) {
      E* e = static_cast<E*>(shadow_ptrs[p]) + offset + begin;
      acc_t* __restrict__ es = e_block;
      if constexpr (kWidenE) {
        widen<kF16C>(e, e_block, m);
      } else {
        es = e;
      }
      const acc_t w = ema_weight<acc_t>(decays[p]);
      // Two copies of the loop, so that each holds one fused multiply-add the compiler vectorises.
      if (w < acc_t(0.5)) {
        for (int64_t j = 0; j < m; ++j) es[j] = ema_blend<acc_t>(es[j], xs[j], w);
      } else {
        for (int64_t j = 0; j < m; ++j) es[j] = ema_blend<acc_t>(es[j], xs[j], w);
      }
      if constexpr (kWidenE) narrow<kF16C>(e_block, e, m);
    }
  }
}

using SpanFn = void (*)(void* const*, int64_t, const void*, int64_t, int64_t, const double*);

template <typename E, typename X>
void ema_span_generic(void* const* shadows, int64_t profiles, const void* x, int64_t offset, int64_t n,
                      const double* decays) {
  ema_span<E, X, false>(shadows, profiles, x, offset, n, decays);
}

#if NF_EMA_X86_MULTIVERSION
template <typename E, typename X>
__attribute__((target("avx2,fma,f16c"))) void ema_span_avx2(void* const* shadows, int64_t profiles, const void* x,
                                                           int64_t offset, int64_t n, const double* decays) {
  ema_span<E, X, true>(shadows, profiles, x, offset, n, decays);
}
#endif

template <typename E, typename X>
SpanFn span_fn() {
#if NF_EMA_X86_MULTIVERSION
  static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                           __builtin_cpu_supports("f16c");
  if (avx2) return &ema_span_avx2<E, X>;
#endif
  return &ema_span_generic<E, X>;
}

SpanFn span_fn_for(EmaPairing pairing) {
  switch (pairing) {
    case EmaPairing::kFloat32OfFloat32: return span_fn<float, float>();
    case EmaPairing::kFloat32OfFloat16: return span_fn<float, c10::Half>();
    case EmaPairing::kFloat32OfBFloat16: return span_fn<float, c10::BFloat16>();
    case EmaPairing::kFloat16OfFloat16: return span_fn<c10::Half, c10::Half>();
    case EmaPairing::kBFloat16OfBFloat16: return span_fn<c10::BFloat16, c10::BFloat16>();
    case EmaPairing::kFloat64OfFloat64: return span_fn<double, double>();
    default: TORCH_CHECK(false, "noisefast: unsupported EMA dtype pairing");
  }
}

void ema_kernel(const EmaOperands& ops) {
  const int64_t n = ops.num_tensors;
  const int64_t profiles = ops.num_profiles;
  std::vector<int64_t> starts(n + 1, 0);  // first element of each tensor in the combined range
  std::vector<SpanFn> fns(n);
  for (int64_t i = 0; i < n; ++i) {
    starts[i + 1] = starts[i] + ops.numels[i];
    fns[i] = span_fn_for(ops.pairings[i]);
  }
  at::parallel_for(0, starts[n], kEmaGrain, [&](int64_t begin, int64_t end) {
    int64_t t = std::upper_bound(starts.begin(), starts.end(), begin) - starts.begin() - 1;
    for (int64_t pos = begin; pos < end; ++t) {
      const int64_t stop = std::min(end, starts[t + 1]);
      fns[t](ops.shadows + t * profiles, profiles, ops.tensors[t], pos - starts[t], stop - pos, ops.decays);
      pos = stop;
    }
  });
}

void ema_update_cpu(at::TensorList ema_tensors, at::TensorList tensors, double decay,
                    const std::optional<at::Tensor>& decay_tensor) {
  const double decays[1] = {decay};
  with_ema_operands(ema_tensors, tensors, decay_tensor.has_value() ? at::ArrayRef<double>() : at::ArrayRef<double>(decays),
                    decay_tensor, /*multi=*/false, ema_kernel);
}

void ema_update_multi_cpu(at::TensorList ema_lists, at::TensorList tensors, at::ArrayRef<double> decays,
                          const std::optional<at::Tensor>& decay_tensor) {
  TORCH_CHECK_VALUE(!decay_tensor.has_value() || decays.empty(), "pass decays as floats or as a tensor, not both");
  with_ema_operands(ema_lists, tensors, decays, decay_tensor, /*multi=*/true, ema_kernel);
}

}  // namespace
}  // namespace cpu

TORCH_LIBRARY_FRAGMENT(noisefast_C, m) {
  m.def("ema_update(Tensor(a!)[] ema_tensors, Tensor[] tensors, float decay, Tensor? decay_tensor) -> ()");
  m.def("ema_update_multi(Tensor(a!)[] ema_lists, Tensor[] tensors, float[] decays, Tensor? decay_tensor) -> ()");
}

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) {
  m.impl("ema_update", &cpu::ema_update_cpu);
  m.impl("ema_update_multi", &cpu::ema_update_multi_cpu);
}

}  // namespace noisefast
