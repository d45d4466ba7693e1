// foreach_gaussian_noise_ / foreach_gaussian_noise on CUDA: dst = src + std_i * z over a list of
// tensors through multi_tensor_apply (one launch for as many tensors of any dtypes as its 4 KiB of
// arguments can describe). Each thread turns one Philox block into four normals (philox.h) and
// applies them to four consecutive elements (gaussian_noise.h).
//
// Per-tensor values beyond pointers (the stream base and the std) travel in two extra pointer
// slots of multi_tensor_apply's metadata, bit-cast to and from 64-bit integers: the metadata is a
// by-value kernel argument, so no device buffer is allocated or copied and the launch stays safe
// under CUDA-graph capture, while multi_tensor_apply.cuh stays generic.
#include <string.h>

#include "elementwise.cuh"
#include "foreach_gaussian_noise_launcher.h"
#include "multi_tensor_apply.cuh"
#include "noisefast/gaussian_noise.h"
#include "noisefast/philox.h"
#include "noisefast/streams.h"

namespace noisefast {
namespace cuda {

namespace {

constexpr int kSlotSrc = 0, kSlotDst = 1, kSlotBase = 2, kSlotStd = 3, kSlots = 4;

inline void* pack_u64(uint64_t v) { return reinterpret_cast<void*>(static_cast<uintptr_t>(v)); }

inline void* pack_f64(double v) {
  uint64_t bits;
  memcpy(&bits, &v, sizeof(bits));
  return pack_u64(bits);
}

__device__ __forceinline__ uint64_t unpack_u64(const void* p) {
  return static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p));
}

__device__ __forceinline__ double unpack_f64(const void* p) { return __longlong_as_double(static_cast<long long>(unpack_u64(p))); }

struct ForeachGaussianNoiseFunctor {
  const int64_t* seed;
  const void* std_device;  // null: each tensor's std is in its kSlotStd slot
  bool std_device_is_double;

  template <typename acc_t>
  __device__ __forceinline__ acc_t sigma(const void* slot) const {
    if (std_device == nullptr) return static_cast<acc_t>(unpack_f64(slot));
    return std_device_is_double ? static_cast<acc_t>(*static_cast<const double*>(std_device))
                                : static_cast<acc_t>(*static_cast<const float*>(std_device));
  }

  // Elements [start, start + n) of tensor t; start is a multiple of kMtaChunk, hence of 4.
  template <typename T, typename Meta>
  __device__ __forceinline__ void chunk(const Meta& meta, int t, int64_t start, int64_t n) const {
    using acc_t = math_t<T>;
    const T* src = static_cast<const T*>(meta.ptrs[kSlotSrc][t]) + start;
    T* dst = static_cast<T*>(meta.ptrs[kSlotDst][t]) + start;
    const acc_t s = sigma<acc_t>(meta.ptrs[kSlotStd][t]);
    if (s == acc_t(0)) {  // untouched, bit for bit (x + 0 * z would turn -0.0 into +0.0)
      if (src != dst) {
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) dst[j] = src[j];
      }
      return;
    }
    const uint64_t seed_value = static_cast<uint64_t>(*seed);
    const uint64_t q0 = (unpack_u64(meta.ptrs[kSlotBase][t]) + static_cast<uint64_t>(start)) / kNormalsPerBlock;
    const int64_t blocks = (n + kNormalsPerBlock - 1) / kNormalsPerBlock;
    const bool aligned = is_pack4_aligned<T>(src) && is_pack4_aligned<T>(dst);
    for (int64_t k = threadIdx.x; k < blocks; k += blockDim.x) {
      const Normal4 z = normal4(seed_value, kStreamNoise, q0 + static_cast<uint64_t>(k));
      const int64_t j = k * kNormalsPerBlock;
      if (aligned && j + kNormalsPerBlock <= n) {
        const Pack4<T> in = *reinterpret_cast<const Pack4<T>*>(src + j);
        Pack4<T> out;
#pragma unroll
        for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
          out.v[lane] = from_math<T>(add_scaled_normal<acc_t>(to_math(in.v[lane]), s, z.z[lane]));
        }
        *reinterpret_cast<Pack4<T>*>(dst + j) = out;
      } else {
#pragma unroll
        for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
          if (j + lane < n) dst[j + lane] = from_math<T>(add_scaled_normal<acc_t>(to_math(src[j + lane]), s, z.z[lane]));
        }
      }
    }
  }

  template <typename Meta>
  __device__ __forceinline__ void operator()(const Meta& meta, int t, int64_t start, int64_t n) const {
    switch (static_cast<DType>(meta.tag[t])) {
      case DType::kFloat32: chunk<float>(meta, t, start, n); break;
      case DType::kFloat16: chunk<__half>(meta, t, start, n); break;
      case DType::kBFloat16: chunk<__nv_bfloat16>(meta, t, start, n); break;
      case DType::kFloat64: chunk<double>(meta, t, start, n); break;
      default: break;  // the glue admits only the dtypes above
    }
  }
};

}  // namespace

cudaError_t launch_foreach_gaussian_noise(const ForeachGaussianNoiseOperands& ops, cudaStream_t stream) {
  if (ops.num_tensors <= 0) return cudaSuccess;
  ForeachGaussianNoiseFunctor functor{ops.seed_device, ops.std_device, ops.std_device_is_double};
  auto pointer_of = [&](int d, int64_t i) -> void* {
    switch (d) {
      case kSlotSrc: return const_cast<void*>(ops.src[i]);
      case kSlotDst: return ops.dst[i];
      case kSlotBase: return pack_u64(ops.bases[i]);
      default: return pack_f64(ops.stds != nullptr ? ops.stds[i] : 0.0);
    }
  };
  constexpr int kMaxTensors = mta_max_tensors<kSlots, sizeof(ForeachGaussianNoiseFunctor)>();
  return multi_tensor_apply<kSlots, kMaxTensors>(ops.num_tensors, ops.numels, ops.dtypes, pointer_of, functor, stream);
}

}  // namespace cuda
}  // namespace noisefast
