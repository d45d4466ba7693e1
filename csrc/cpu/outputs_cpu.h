// Fresh outputs of CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/EmptyTensor.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace noisefast {
namespace cpu {

// The kernels are the first to touch their fresh outputs. With 4 KiB pages that first touch costs
// more than computing the values (two 16 MiB outputs: 23 ms of page faults on one core, 8 ms with
// 2 MiB pages; measured 2026-11-22), so multi-megabyte outputs ask for transparent huge pages on
// their 2 MiB-aligned interior, as PyTorch's allocator does under THP_MEM_ALLOC_ENABLE=1. The
// advice is only a hint: where THP is off or the call fails nothing changes.
inline void advise_huge_pages(const at::Tensor& t) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(t.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + t.nbytes()) & ~(kHugePage - 1);
  if (t.nbytes() >= 2 * kHugePage && last > first) {
    madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
  }
#endif
}

// A contiguous tensor shaped like `like`, advised as above.
inline at::Tensor new_output_like(const at::Tensor& like) {
  // at::detail::empty_cpu is what empty_like reaches on the CPU, without the dispatcher (~0.15 us a call).
  at::Tensor out = at::detail::empty_cpu(like.sizes(), like.scalar_type(), /*pin_memory=*/false,
                                         at::MemoryFormat::Contiguous);
  advise_huge_pages(out);
  return out;
}

}  // namespace cpu
}  // namespace noisefast
