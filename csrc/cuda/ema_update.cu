// EMA update on CUDA: shadow <- lerp(shadow, weight, 1 - decay) for every (weight, profile) of a
// list, through multi_tensor_apply. Each block reads a chunk of one weight once and updates the
// chunk of each of its (up to kEmaProfilesPerPass) shadows; math in float (double for float64).
#include "elementwise.cuh"
#include "ema_update_launcher.h"
#include "multi_tensor_apply.cuh"

namespace noisefast {
namespace cuda {

namespace {

constexpr int kEmaProfilesPerPass = 4;
constexpr int kEmaIlp = 2;  // packs of four elements each thread holds in flight per profile

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

template <int P>
struct EmaFunctor {
  EmaDecays decays;

  template <typename Meta>
  __device__ __forceinline__ void operator()(const Meta& meta, int t, int64_t start, int64_t n) const {
    switch (static_cast<EmaPairing>(meta.tag[t])) {
      case EmaPairing::kFloat32OfFloat32: ema_chunk<P, float, float>(meta, t, start, n, decays); break;
      case EmaPairing::kFloat32OfFloat16: ema_chunk<P, float, __half>(meta, t, start, n, decays); break;
      case EmaPairing::kFloat32OfBFloat16: ema_chunk<P, float, __nv_bfloat16>(meta, t, start, n, decays); break;
      case EmaPairing::kFloat16OfFloat16: ema_chunk<P, __half, __half>(meta, t, start, n, decays); break;
      case EmaPairing::kBFloat16OfBFloat16:
        ema_chunk<P, __nv_bfloat16, __nv_bfloat16>(meta, t, start, n, decays);
        break;
      case EmaPairing::kFloat64OfFloat64: ema_chunk<P, double, double>(meta, t, start, n, decays); break;
      default: break;  // the glue admits only the pairings above
    }
  }
};

// Profiles first .. first + P - 1 of every tensor, in as few launches as the metadata allows.
template <int P>
cudaError_t ema_pass(const EmaOperands& ops, int64_t first, const uint8_t* tags, cudaStream_t stream) {
  EmaFunctor<P> functor;
  for (int p = 0; p < P; ++p) functor.decays.host[p] = ops.decays != nullptr ? ops.decays[first + p] : 0.0;
  for (int p = P; p < kEmaProfilesPerPass; ++p) functor.decays.host[p] = 0.0;
  functor.decays.device_is_double = ops.decay_device_is_double;
  functor.decays.device = ops.decay_device == nullptr ? nullptr
      : static_cast<const char*>(ops.decay_device) + first * (ops.decay_device_is_double ? 8 : 4);
  const int64_t profiles = ops.num_profiles;
  auto pointer_of = [&](int d, int64_t i) -> void* {
    return d == 0 ? const_cast<void*>(ops.tensors[i]) : ops.shadows[i * profiles + first + d - 1];
  };
  constexpr int kMaxTensors = mta_max_tensors<P + 1, sizeof(EmaFunctor<P>)>();
  return multi_tensor_apply<P + 1, kMaxTensors>(ops.num_tensors, ops.numels, tags, pointer_of, functor, stream);
}

}  // namespace

cudaError_t launch_ema_update(const EmaOperands& operands, cudaStream_t stream) {
  if (operands.num_tensors <= 0) return cudaSuccess;
  static_assert(sizeof(EmaPairing) == sizeof(uint8_t), "pairings are passed as one-byte tags");
  const uint8_t* tags = reinterpret_cast<const uint8_t*>(operands.pairings);
  for (int64_t first = 0; first < operands.num_profiles; first += kEmaProfilesPerPass) {
    const int64_t left = operands.num_profiles - first;
    cudaError_t err;
    switch (left < kEmaProfilesPerPass ? left : kEmaProfilesPerPass) {
      case 1: err = ema_pass<1>(operands, first, tags, stream); break;
      case 2: err = ema_pass<2>(operands, first, tags, stream); break;
      case 3: err = ema_pass<3>(operands, first, tags, stream); break;
      default: err = ema_pass<4>(operands, first, tags, stream); break;
    }
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}

}  // namespace cuda
}  // namespace noisefast
