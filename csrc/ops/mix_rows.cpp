// Torch-facing C++ of noisefast_C::mix_rows (schema: noisefast/ops/mix_rows.py): the kernel's
// preconditions, the index check, the output, and the registration of the CPU kernel
// (csrc/cpu/mix_rows_cpu.h). On GPUs this op runs its Triton kernel (noisefast/triton/mix_rows.py);
// it has no CUDA C++ kernel.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstdint>

#include "cpu/mix_rows_cpu.h"
#include "torch_checks.h"

namespace noisefast {
namespace {

at::Tensor mix_rows_cpu(const at::Tensor& x, const at::Tensor& index, const at::Tensor& lam) {
  TORCH_CHECK(x.dim() >= 1, "noisefast: mix_rows: x needs a batch dimension");
  TORCH_CHECK(sample_blocked(x), "noisefast: mix_rows: the kernel needs a sample-blocked x");
  TORCH_CHECK(index.scalar_type() == at::kLong && index.dim() == 1 && index.size(0) == x.size(0),
              "noisefast: mix_rows: index must be an int64 tensor of shape [", x.size(0), "], got ",
              index.scalar_type(), " of shape ", index.sizes());
  TORCH_CHECK(lam.numel() == 1 && lam.device().is_cpu() && lam.is_floating_point(),
              "noisefast: mix_rows: lam must be a one-element float tensor on the CPU");
  const double lam_value = lam.to(at::kDouble).item<double>();
  at::Tensor out = at::empty_like(x);
  const int64_t rows = x.size(0);
  if (x.numel() == 0) return out;
  const at::Tensor idx = index.contiguous();
  const int64_t* idx_data = idx.data_ptr<int64_t>();
  // Checked before anything is written: a wrong partner row would read outside x.
  for (int64_t b = 0; b < rows; ++b) {
    TORCH_CHECK_INDEX(idx_data[b] >= 0 && idx_data[b] < rows, "index[", b, "] = ", idx_data[b],
                      " is out of range for a batch of ", rows);
  }
  cpu::mix_rows(x, idx_data, lam_value, out);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(noisefast_C, CPU, m) { m.impl("mix_rows", &mix_rows_cpu); }

}  // namespace noisefast
