// gaussian_noise on CUDA: out = x + std * scale[(i / inner) % period] * z, one pass, z never stored.
#include "elementwise.cuh"
#include "gaussian_noise_launcher.h"
#include "noisefast/gaussian_noise.h"
#include "noisefast/philox.h"
#include "noisefast/streams.h"

namespace noisefast {
namespace cuda {
namespace {

template <typename scalar_t, bool kAligned>
__global__ void gaussian_noise_kernel(const scalar_t* __restrict__ x, scalar_t* __restrict__ out, int64_t n,
                                      const int64_t* __restrict__ seed_ptr, math_t<scalar_t> std,
                                      const math_t<scalar_t>* __restrict__ scale, int64_t period,
                                      int64_t inner) {
  using acc_t = math_t<scalar_t>;
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const int64_t num_blocks = (n + kNormalsPerBlock - 1) / kNormalsPerBlock;
  for (int64_t q = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; q < num_blocks;
       q += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Normal4 z = normal4(seed, kStreamNoise, static_cast<uint64_t>(q));
    const int64_t base = q * kNormalsPerBlock;
    if (kAligned && base + kNormalsPerBlock <= n) {
      const Pack4<scalar_t> in = *reinterpret_cast<const Pack4<scalar_t>*>(x + base);
      Pack4<scalar_t> result;
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
        const acc_t sigma = scale == nullptr ? std : std * scale[((base + lane) / inner) % period];
        result.v[lane] = from_math<scalar_t>(add_scaled_normal<acc_t>(to_math(in.v[lane]), sigma, z.z[lane]));
      }
      *reinterpret_cast<Pack4<scalar_t>*>(out + base) = result;
    } else {
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
        const int64_t i = base + lane;
        if (i < n) {
          const acc_t sigma = scale == nullptr ? std : std * scale[(i / inner) % period];
          out[i] = from_math<scalar_t>(add_scaled_normal<acc_t>(to_math(x[i]), sigma, z.z[lane]));
        }
      }
    }
  }
}

}  // namespace

cudaError_t launch_gaussian_noise(const void* x, void* out, DType dtype, int64_t n, const int64_t* seed,
                                  double std, const void* scale, int64_t period, int64_t inner,
                                  cudaStream_t cuda_stream) {
  if (n <= 0) return cudaSuccess;
  const unsigned grid = grid_for((n + kNormalsPerBlock - 1) / kNormalsPerBlock);
  NOISEFAST_DISPATCH_DTYPE(dtype, {
    using acc_t = math_t<scalar_t>;
    const scalar_t* in = static_cast<const scalar_t*>(x);
    scalar_t* result = static_cast<scalar_t*>(out);
    const acc_t* scale_data = static_cast<const acc_t*>(scale);
    if (is_pack4_aligned<scalar_t>(in) && is_pack4_aligned<scalar_t>(result)) {
      gaussian_noise_kernel<scalar_t, true><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(
          in, result, n, seed, static_cast<acc_t>(std), scale_data, period, inner);
    } else {
      gaussian_noise_kernel<scalar_t, false><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(
          in, result, n, seed, static_cast<acc_t>(std), scale_data, period, inner);
    }
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace noisefast
