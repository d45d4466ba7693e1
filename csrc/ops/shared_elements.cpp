// check_no_shared_elements (csrc/ops/shared_elements.h): which tensors of a list
// share elements. Host code on tensor metadata; reads device memory only in the rare case that
// at::get_overlap_status cannot decide (two non-dense views of one buffer).
#include "shared_elements.h"

#include <ATen/MemoryOverlap.h>
#include <c10/util/SmallVector.h>

#include <algorithm>
#include <utility>
#include <vector>

namespace noisefast {

namespace {

// Byte range [first, last) that a strided tensor can touch.
std::pair<uintptr_t, uintptr_t> footprint(const at::Tensor& t) {
  int64_t extent = 1;
  for (int64_t d = 0; d < t.dim(); ++d) extent += (t.size(d) - 1) * t.stride(d);
  const uintptr_t first = reinterpret_cast<uintptr_t>(t.data_ptr());
  return {first, first + static_cast<uintptr_t>(extent) * t.element_size()};
}

bool same_view(const at::Tensor& a, const at::Tensor& b) {
  return a.data_ptr() == b.data_ptr() && a.sizes() == b.sizes() && a.strides() == b.strides() &&
         a.scalar_type() == b.scalar_type();
}

// Byte address of every element of t (int64, on t's device).
at::Tensor element_addresses(const at::Tensor& t) {
  const auto options = at::TensorOptions().dtype(at::kLong).device(t.device());
  at::Tensor addresses = at::full({}, static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data_ptr())), options);
  for (int64_t d = 0; d < t.dim(); ++d) {
    addresses = addresses.unsqueeze(-1) + at::arange(t.size(d), options) * (t.stride(d) * t.element_size());
  }
  return addresses.reshape(-1);
}

// Whether two views whose footprints overlap have an element in common, element by element (the
// rare case get_overlap_status cannot decide, e.g. w and w[:, 0]). Mixed element sizes count as shared.
bool elements_intersect(const at::Tensor& a, const at::Tensor& b) {
  if (a.element_size() != b.element_size()) return true;
  return at::isin(element_addresses(a), element_addresses(b)).any().item<bool>();
}

}  // namespace

void check_no_shared_elements(at::TensorList tensors, int64_t num_written,
                              const std::function<std::string(int64_t)>& name_of,
                              const std::function<std::string(int64_t, int64_t)>& consequence) {
  c10::SmallVector<std::pair<std::pair<uintptr_t, uintptr_t>, int64_t>, 16> spans;
  for (int64_t i = 0; i < static_cast<int64_t>(tensors.size()); ++i) {
    if (tensors[i].numel() > 0) spans.push_back({footprint(tensors[i]), i});
  }
  std::sort(spans.begin(), spans.end());
  for (size_t a = 0; a < spans.size(); ++a) {
    for (size_t b = a + 1; b < spans.size() && spans[b].first.first < spans[a].first.second; ++b) {
      const int64_t i = std::min(spans[a].second, spans[b].second), j = std::max(spans[a].second, spans[b].second);
      if (i >= num_written) continue;  // two read operands
      const at::MemOverlapStatus status = at::get_overlap_status(tensors[i], tensors[j]);
      const bool shared = status == at::MemOverlapStatus::Full || status == at::MemOverlapStatus::Partial ||
                          (status == at::MemOverlapStatus::TooHard &&
                           (same_view(tensors[i], tensors[j]) || elements_intersect(tensors[i], tensors[j])));
      TORCH_CHECK_VALUE(!shared, name_of(i), " and ", name_of(j), " share memory: ", consequence(i, j));
    }
  }
}

}  // namespace noisefast
