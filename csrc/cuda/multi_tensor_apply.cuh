// multi_tensor_apply: one kernel launch over a list of tensors (apex's design, reshaped).
//
// The host packs, for up to kMaxTensors tensors, kDepth pointers each (for example a weight and
// its EMA shadows), their element counts, a one-byte tag (for example the dtype pairing) and the
// running total of their chunks into a struct passed BY VALUE as a kernel argument: no device
// allocation and no host-to-device copy, so a launch is safe under CUDA-graph capture. Each tensor
// is cut into chunks of kMtaChunk elements; a block takes chunks in a grid-stride loop and finds a
// chunk's tensor by binary search over the running totals (apex instead stores one (tensor, chunk)
// pair per block, which caps a launch at a few hundred chunks; here only the tensor count caps
// it). A list longer than kMaxTensors takes several launches.
//
// The struct must fit the 4 KiB of kernel parameters that every CUDA version and architecture
// accepts (static_assert below). The functor gets (meta, tensor index, first element, count).
#pragma once

#include <cuda_runtime.h>
#include <stdint.h>

namespace noisefast {
namespace cuda {

constexpr int64_t kMtaChunk = 65536;        // elements per chunk (a block's unit of work)
constexpr int kMtaThreads = 512;            // threads per block
constexpr size_t kMtaParamBytes = 4096;     // kernel-parameter limit on every architecture
constexpr int32_t kMtaMaxChunks = 0x7fffffff;

template <int kDepth, int kMaxTensors>
struct TensorListMeta {
  static constexpr int depth = kDepth;
  static constexpr int max_tensors = kMaxTensors;
  void* ptrs[kDepth][kMaxTensors];
  int64_t numel[kMaxTensors];
  int32_t chunk_end[kMaxTensors];  // chunks of tensors 0..t, inclusive
  uint8_t tag[kMaxTensors];
  int32_t num_tensors;
};

// The largest tensor count whose metadata, together with the functor's arguments, fits the limit.
template <int kDepth, size_t kFunctorBytes>
constexpr int mta_max_tensors() {
  constexpr size_t per_tensor = kDepth * sizeof(void*) + sizeof(int64_t) + sizeof(int32_t) + sizeof(uint8_t);
  constexpr size_t fixed = 64 + kFunctorBytes;  // num_tensors, padding, alignment slack
  return static_cast<int>((kMtaParamBytes - fixed) / per_tensor);
}

// kMinBlocks: blocks per SM the register allocation must allow (__launch_bounds__): 1 lets a
// thread use up to 128 registers, 2 caps it at 64.
template <typename Meta, typename Functor, int kMinBlocks>
__global__ void __launch_bounds__(kMtaThreads, kMinBlocks)
multi_tensor_kernel(const __grid_constant__ Meta meta, const __grid_constant__ Functor functor) {
  const int32_t total = meta.chunk_end[meta.num_tensors - 1];
  for (int32_t chunk = blockIdx.x; chunk < total; chunk += gridDim.x) {
    int lo = 0, hi = meta.num_tensors - 1;  // the first tensor whose running total exceeds chunk
    while (lo < hi) {
      const int mid = (lo + hi) >> 1;
      if (meta.chunk_end[mid] > chunk) hi = mid; else lo = mid + 1;
    }
    const int32_t first_chunk = lo == 0 ? 0 : meta.chunk_end[lo - 1];
    const int64_t start = static_cast<int64_t>(chunk - first_chunk) * kMtaChunk;
    const int64_t remaining = meta.numel[lo] - start;
    functor(meta, lo, start, remaining < kMtaChunk ? remaining : kMtaChunk);
  }
}

// Blocks per launch: enough to fill every SM a few times over; more only adds scheduling.
inline unsigned mta_grid(int64_t chunks) {
  int device = 0, sms = 132;
  if (cudaGetDevice(&device) == cudaSuccess) cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t cap = static_cast<int64_t>(sms) * (2048 / kMtaThreads) * 2;
  return static_cast<unsigned>(chunks < cap ? chunks : cap);
}

// Runs functor over n tensors: tensor i has numel[i] > 0 elements, tag tags[i] (0 when tags is
// null) and pointers pointer_of(d, i) for d < kDepth. Launches on `stream` whenever the metadata
// is full.
template <int kDepth, int kMaxTensors, int kMinBlocks = 1, typename Functor, typename PointerOf>
cudaError_t multi_tensor_apply(int64_t n, const int64_t* numel, const uint8_t* tags, const PointerOf& pointer_of,
                               const Functor& functor, cudaStream_t stream) {
  using Meta = TensorListMeta<kDepth, kMaxTensors>;
  static_assert(sizeof(Meta) + sizeof(Functor) <= kMtaParamBytes, "kernel arguments exceed 4 KiB");
  Meta meta;
  meta.num_tensors = 0;
  int64_t chunks = 0;
  auto launch = [&]() -> cudaError_t {
    multi_tensor_kernel<Meta, Functor, kMinBlocks><<<mta_grid(chunks), kMtaThreads, 0, stream>>>(meta, functor);
    meta.num_tensors = 0;
    chunks = 0;
    return cudaGetLastError();
  };
  for (int64_t i = 0; i < n; ++i) {
    const int64_t tensor_chunks = (numel[i] + kMtaChunk - 1) / kMtaChunk;
    if (tensor_chunks > kMtaMaxChunks) return cudaErrorInvalidValue;
    if (meta.num_tensors == kMaxTensors || chunks + tensor_chunks > kMtaMaxChunks) {
      const cudaError_t err = launch();
      if (err != cudaSuccess) return err;
    }
    const int k = meta.num_tensors++;
    for (int d = 0; d < kDepth; ++d) meta.ptrs[d][k] = pointer_of(d, i);
    meta.numel[k] = numel[i];
    meta.tag[k] = tags != nullptr ? tags[i] : 0;
    chunks += tensor_chunks;
    meta.chunk_end[k] = static_cast<int32_t>(chunks);
  }
  return meta.num_tensors > 0 ? launch() : cudaSuccess;
}

}  // namespace cuda
}  // namespace noisefast
