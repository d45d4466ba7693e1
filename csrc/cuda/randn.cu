// The portable normal stream on CUDA: each thread computes one Philox block (four normals).
#include "elementwise.cuh"
#include "randn_launcher.h"
#include "noisefast/philox.h"

namespace noisefast {
namespace cuda {
namespace {

template <typename scalar_t, bool kAligned>
__global__ void randn_kernel(scalar_t* __restrict__ out, int64_t n, const int64_t* __restrict__ seed_ptr,
                             uint64_t stream, uint64_t offset) {
  const uint64_t seed = static_cast<uint64_t>(*seed_ptr);
  const uint64_t first_block = offset / kNormalsPerBlock;
  const int64_t num_blocks = static_cast<int64_t>((offset + n - 1) / kNormalsPerBlock + 1 - first_block);
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < num_blocks;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t q = first_block + k;
    const Normal4 z = normal4(seed, stream, q);
    const int64_t base = static_cast<int64_t>(q * kNormalsPerBlock - offset);
    if (kAligned && base + kNormalsPerBlock <= n) {  // kAligned implies offset % 4 == 0, so base >= 0
      Pack4<scalar_t> pack;
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) pack.v[lane] = from_math<scalar_t>(z.z[lane]);
      *reinterpret_cast<Pack4<scalar_t>*>(out + base) = pack;
    } else {
#pragma unroll
      for (int lane = 0; lane < kNormalsPerBlock; ++lane) {
        const int64_t i = base + lane;
        if (i >= 0 && i < n) out[i] = from_math<scalar_t>(z.z[lane]);
      }
    }
  }
}

}  // namespace

cudaError_t launch_randn(void* out, DType dtype, int64_t n, const int64_t* seed, uint64_t stream,
                         uint64_t offset, cudaStream_t cuda_stream) {
  if (n <= 0) return cudaSuccess;
  const int64_t num_blocks = static_cast<int64_t>((offset + n - 1) / kNormalsPerBlock + 1 - offset / kNormalsPerBlock);
  const unsigned grid = grid_for(num_blocks);
  NOISEFAST_DISPATCH_DTYPE(dtype, {
    scalar_t* data = static_cast<scalar_t*>(out);
    if (offset % kNormalsPerBlock == 0 && is_pack4_aligned<scalar_t>(data)) {
      randn_kernel<scalar_t, true><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(data, n, seed, stream, offset);
    } else {
      randn_kernel<scalar_t, false><<<grid, kThreadsPerBlock, 0, cuda_stream>>>(data, n, seed, stream, offset);
    }
  });
  return cudaGetLastError();
}

}  // namespace cuda
}  // namespace noisefast
