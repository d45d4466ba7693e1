// EMA update on CUDA: shadow <- lerp(shadow, weight, 1 - decay) for every (weight, profile) of a
// list, through multi_tensor_apply. Each block reads a chunk of one weight once and updates the
// chunk of each of its (up to kEmaProfilesPerPass) shadows; math in float (double for float64).
//
// One kernel per (dtype pairing, profile count): the tensors of a list are launched pairing by
// pairing. (A single kernel switching on each tensor's pairing inlined all six paths, whose float64
// path set the registers of all, and with 2-4 profiles it kept 88-936 bytes of stack per thread.)
#include <vector>

#include "elementwise.cuh"
#include "ema_update_launcher.h"
#include "multi_tensor_apply.cuh"

namespace noisefast {
namespace cuda {

namespace {

constexpr int kEmaProfilesPerPass = 4;
// Packs of four elements each thread holds in flight per tensor: two for one or two profiles, one
// for three or four (whose shadows alone are 12-16 packs: with two, the float32 path took 98
// registers; the bytes in flight per SM stay well above what hides DRAM latency).
template <int P>
constexpr int ema_ilp() {
  return P <= 2 ? 2 : 1;
}

// Blocks per SM the kernel's registers must allow (__launch_bounds__): two, i.e. at most 64
// registers per thread, for the float32 path; one (128) for the others. Measured with nvcc 13.0
// (tests/test_cuda_resources.py checks the registers and that nothing spills): without the bound
// the float32 kernel with four profiles spilled 8 bytes at 40 registers, and with it the
// float16/bfloat16 kernels with two or four profiles spilled; float64 values take two registers.
template <typename E, typename X>
constexpr int ema_min_blocks() {
  return sizeof(E) == 4 && sizeof(X) == 4 ? 2 : 1;
}

struct EmaDecays {
  double host[kEmaProfilesPerPass];  // used when device is null
  const void* device;                // the profiles' decays in device memory, from first_profile on
  bool device_is_double;

  template <typename acc_t>
  __device__ __forceinline__ acc_t weight(int p) const {
    if (device == nullptr) return ema_weight<acc_t>(host[p]);
    const double d = device_is_double ? static_cast<const double*>(device)[p]
                                      : static_cast<double>(static_cast<const float*>(device)[p]);
    return ema_weight<acc_t>(d);
  }
};

// One chunk: x[0..n) read once; shadow[p][0..n) updated for p < P.
template <int P, typename E, typename X, typename Meta>
__device__ __forceinline__ void ema_chunk(const Meta& meta, int t, int64_t start, int64_t n, const EmaDecays& decays) {
  using acc_t = math_t<E>;
  const X* __restrict__ x = static_cast<const X*>(meta.ptrs[0][t]) + start;
  E* e[P];
  acc_t w[P];
  bool aligned = is_pack4_aligned<X>(x);
#pragma unroll
  for (int p = 0; p < P; ++p) {
    e[p] = static_cast<E*>(meta.ptrs[p + 1][t]) + start;
    w[p] = decays.weight<acc_t>(p);
    aligned = aligned && is_pack4_aligned<E>(e[p]);
  }
  int64_t scalar_from = 0;
  if (aligned) {
    const int64_t packs = n / 4;
    const Pack4<X>* xv = reinterpret_cast<const Pack4<X>*>(x);
    // All loads of an iteration are issued before its stores: the stores may alias the loads as
    // far as the compiler knows, so without this it would serialise them.
    constexpr int kEmaIlp = ema_ilp<P>();
    for (int64_t base = threadIdx.x; base < packs; base += static_cast<int64_t>(blockDim.x) * kEmaIlp) {
      Pack4<X> xs[kEmaIlp];
      Pack4<E> es[P][kEmaIlp];
#pragma unroll
      for (int u = 0; u < kEmaIlp; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < packs) {
          xs[u] = xv[k];
#pragma unroll
          for (int p = 0; p < P; ++p) es[p][u] = reinterpret_cast<const Pack4<E>*>(e[p])[k];
        }
      }
#pragma unroll
      for (int u = 0; u < kEmaIlp; ++u) {
        const int64_t k = base + static_cast<int64_t>(u) * blockDim.x;
        if (k < packs) {
#pragma unroll
          for (int p = 0; p < P; ++p) {
#pragma unroll
            for (int lane = 0; lane < 4; ++lane) {
              es[p][u].v[lane] = from_math<E>(
                  ema_blend<acc_t>(to_math(es[p][u].v[lane]), to_math(xs[u].v[lane]), w[p]));
            }
            reinterpret_cast<Pack4<E>*>(e[p])[k] = es[p][u];
          }
        }
      }
    }
    scalar_from = packs * 4;
  }
  for (int64_t j = scalar_from + threadIdx.x; j < n; j += blockDim.x) {
    const acc_t xj = to_math(x[j]);
#pragma unroll
    for (int p = 0; p < P; ++p) e[p][j] = from_math<E>(ema_blend<acc_t>(to_math(e[p][j]), xj, w[p]));
  }
}

template <int P, typename E, typename X>
struct EmaFunctor {
  EmaDecays decays;

  template <typename Meta>
  __device__ __forceinline__ void operator()(const Meta& meta, int t, int64_t start, int64_t n) const {
    ema_chunk<P, E, X>(meta, t, start, n, decays);
  }
};

// Profiles first .. first + P - 1 of the tensors `members` (all of one pairing, shadow type E,
// weight type X), in as few launches as the metadata allows.
template <int P, typename E, typename X>
cudaError_t ema_pass(const EmaOperands& ops, int64_t first, const std::vector<int64_t>& members,
                     const std::vector<int64_t>& numels, cudaStream_t stream) {
  EmaFunctor<P, E, X> functor;
  for (int p = 0; p < P; ++p) functor.decays.host[p] = ops.decays != nullptr ? ops.decays[first + p] : 0.0;
  for (int p = P; p < kEmaProfilesPerPass; ++p) functor.decays.host[p] = 0.0;
  functor.decays.device_is_double = ops.decay_device_is_double;
  functor.decays.device = ops.decay_device == nullptr ? nullptr
      : static_cast<const char*>(ops.decay_device) + first * (ops.decay_device_is_double ? 8 : 4);
  const int64_t profiles = ops.num_profiles;
  auto pointer_of = [&](int d, int64_t k) -> void* {
    const int64_t i = members[k];
    return d == 0 ? const_cast<void*>(ops.tensors[i]) : ops.shadows[i * profiles + first + d - 1];
  };
  constexpr int kMaxTensors = mta_max_tensors<P + 1, sizeof(EmaFunctor<P, E, X>)>();
  return multi_tensor_apply<P + 1, kMaxTensors, ema_min_blocks<E, X>()>(
      static_cast<int64_t>(members.size()), numels.data(), /*tags=*/nullptr, pointer_of, functor, stream);
}

// Every profile of the tensors `members` (one pairing), up to kEmaProfilesPerPass per pass.
template <typename E, typename X>
cudaError_t ema_update_pairing(const EmaOperands& ops, const std::vector<int64_t>& members,
                               const std::vector<int64_t>& numels, cudaStream_t stream) {
  for (int64_t first = 0; first < ops.num_profiles; first += kEmaProfilesPerPass) {
    const int64_t left = ops.num_profiles - first;
    cudaError_t err;
    switch (left < kEmaProfilesPerPass ? left : kEmaProfilesPerPass) {
      case 1: err = ema_pass<1, E, X>(ops, first, members, numels, stream); break;
      case 2: err = ema_pass<2, E, X>(ops, first, members, numels, stream); break;
      case 3: err = ema_pass<3, E, X>(ops, first, members, numels, stream); break;
      default: err = ema_pass<4, E, X>(ops, first, members, numels, stream); break;
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace

cudaError_t launch_ema_update(const EmaOperands& operands, cudaStream_t stream) {
  if (operands.num_tensors <= 0) return cudaSuccess;
  std::vector<int64_t> members, numels;
  const EmaPairing pairings[] = {EmaPairing::kFloat32OfFloat32, EmaPairing::kFloat32OfFloat16,
                                 EmaPairing::kFloat32OfBFloat16, EmaPairing::kFloat16OfFloat16,
                                 EmaPairing::kBFloat16OfBFloat16, EmaPairing::kFloat64OfFloat64};
  for (const EmaPairing pairing : pairings) {
    members.clear();
    numels.clear();
    for (int64_t i = 0; i < operands.num_tensors; ++i) {
      if (operands.pairings[i] == pairing) {
        members.push_back(i);
        numels.push_back(operands.numels[i]);
      }
    }
    if (members.empty()) continue;
    cudaError_t err = cudaErrorInvalidValue;
    switch (pairing) {
      case EmaPairing::kFloat32OfFloat32: err = ema_update_pairing<float, float>(operands, members, numels, stream); break;
      case EmaPairing::kFloat32OfFloat16: err = ema_update_pairing<float, __half>(operands, members, numels, stream); break;
      case EmaPairing::kFloat32OfBFloat16:
        err = ema_update_pairing<float, __nv_bfloat16>(operands, members, numels, stream);
        break;
      case EmaPairing::kFloat16OfFloat16: err = ema_update_pairing<__half, __half>(operands, members, numels, stream); break;
      case EmaPairing::kBFloat16OfBFloat16:
        err = ema_update_pairing<__nv_bfloat16, __nv_bfloat16>(operands, members, numels, stream);
        break;
      case EmaPairing::kFloat64OfFloat64: err = ema_update_pairing<double, double>(operands, members, numels, stream); break;
      default: break;  // the glue admits only the pairings above
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace noisefast
