// gaussian_noise on CUDA: out = x + std * scale[(i / inner) % period] * z_i, one pass, z never stored.
// z_i is element map.position(i) of the noise stream (noisefast/stream_map.h): consecutive stream
// elements from map.offset (the contiguous kernel, a Philox call per four elements), or a DTensor
// shard's global positions (the mapped kernel, a Philox call per element).
#include "elementwise.cuh"
#include "gaussian_noise_launcher.h"
#include "noisefast/gaussian_noise.h"
#include "noisefast/philox.h"
#include "noisefast/stream_map.h"
#include "noisefast/streams.h"

namespace noisefast {
namespace cuda {
namespace {

template <typename acc_t>
__device__ __forceinline__ acc_t sigma_at(acc_t std, const acc_t* scale, int64_t i, int64_t period, int64_t inner) {
  return scale == nullptr ? std : std * scale[(i / inner) % period];
}

// Elements offset .. offset + n - 1 of the stream, a Philox block per thread and step; kAligned
// (Pack4 access) implies offset % 4 == 0, so a block's elements are base .. base + 3 with base >= 0.
template <typename scalar_t, bool kAligned>
__global__ void gaussian_noise_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n,
                                      const int64_t* __restrict__ seed_ptr, math_t<scalar_t> std,
                                      const math_t<scalar_t>* __restrict__ scale, int64_t period,
                                      int64_t inner, uint64_t offset) {
  using acc_t = math_t<scalar_t>;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const uint64_t first_block = offset / kNormalsPerBlock;
  const int64_t num_blocks = static_cast<int64_t>((offset + n - 1) / kNormalsPerBlock + 1 - first_block);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < num_blocks;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t q = first_block + static_cast<uint64_t>(k);
    const Normal4 z = normal4(seed, kStreamNoise, q);
    const int64_t base = static_cast<int64_t>(q * kNormalsPerBlock - offset);
    if (kAligned && base + kNormalsPerBlock <= n) {
      const Pack4<scalar_t> in = *reinterpret_cast<const Pack4<scalar_t>*>(x + base);
      Pack4<scalar_t> result;
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
        const acc_t sigma = sigma_at<acc_t>(std, scale, base + lane, period, inner);
        result.v[lane] = from_math<scalar_t>(add_scaled_normal<acc_t>(to_math(in.v[lane]), sigma, z.z[lane]));
      }
      *reinterpret_cast<Pack4<scalar_t>*>(out + base) = result;
    } else {
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
        const int64_t i = base + lane;
        if (i >= 0 && i < n) {
          const acc_t sigma = sigma_at<acc_t>(std, scale, i, period, inner);
          out[i] = from_math<scalar_t>(add_scaled_normal<acc_t>(to_math(x[i]), sigma, z.z[lane]));
        }
      }
    }
  }
}

// Element i draws stream element map.position(i), computed alone (normal_at).
template <typename scalar_t>
__global__ void gaussian_noise_mapped_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n,
                                             const int64_t* __restrict__ seed_ptr, math_t<scalar_t> std,
                                             const math_t<scalar_t>* __restrict__ scale, int64_t period,
                                             int64_t inner, StreamMap map) {
  using acc_t = math_t<scalar_t>;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float z = normal_at(seed, kStreamNoise, static_cast<uint64_t>(map.position(i)));
    out[i] = from_math<scalar_t>(add_scaled_normal<acc_t>(to_math(x[i]), sigma_at<acc_t>(std, scale, i, period, inner), z));
  }
}

}  // namespace

cudaError_t launch_gaussian_noise(const void* x, void* out, DType dtype, int64_t n, const int64_t* seed,
                                  double std, const void* scale, int64_t period, int64_t inner,
                                  const StreamMap& map, cudaStream_t cuda_stream) {
  if (n <= 0) return cudaSuccess;
  const uint64_t offset = static_cast<uint64_t>(map.offset);
  NOISEFAST_DISPATCH_DTYPE(dtype, {
    using acc_t = math_t<scalar_t>;
    const scalar_t* in = static_cast<const scalar_t*>(x);
    scalar_t* result = static_cast<scalar_t*>(out);
    const acc_t* scale_data = static_cast<const acc_t*>(scale);
    const acc_t sigma = static_cast<acc_t>(std);
    if (!map.contiguous()) {
      gaussian_noise_mapped_kernel<scalar_t><<<grid_for(n), kThreadsPerBlock, 0, cuda_stream>>>(
          in, result, n, seed, sigma, scale_data, period, inner, map);
    } else {
      const unsigned grid = grid_for(static_cast<int64_t>((offset + n - 1) / kNormalsPerBlock + 1 -
                                                          offset / kNormalsPerBlock));
      if (offset % kNormalsPerBlock == 0 && is_pack4_aligned<scalar_t>(in) && is_pack4_aligned<scalar_t>(result)) {
        gaussian_noise_kernel<scalar_t, true><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(
            in, result, n, seed, sigma, scale_data, period, inner, offset);
      } else {
        gaussian_noise_kernel<scalar_t, false><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(
            in, result, n, seed, sigma, scale_data, period, inner, offset);
      }
    }
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace noisefast
