// Whether tensors updated in place in one pass share elements with each other or with the tensors
// the pass reads (torch-facing, host code; defined in csrc/ops/shared_elements.cpp). Used by the
// list ops whose kernels write many tensors at once: foreach_gaussian_noise_ (noise would be added
// twice) and the EMA updates (a shadow listed twice would be updated twice, and on CUDA by two
// blocks at once: a race; a weight that is also a shadow would be read while it is written, with
// a result that depends on the order of the blocks and threads).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <functional>
#include <string>

namespace noisefast {

// Raises ValueError "<name_of(i)> and <name_of(j)> share memory: <consequence(i, j)>" for the
// first pair i < j of non-empty tensors with an element in common of which at least one is written:
// tensors[0 .. num_written) are written in place, the others only read (read operands may share
// elements with each other). Exact: at::get_overlap_status for dense tensors, element addresses
// otherwise (two views whose memory interleaves without common elements, as w[:, 0] and w[:, 1],
// are disjoint).
void check_no_shared_elements(at::TensorList tensors, int64_t num_written,
                              const std::function<std::string(int64_t)>& name_of,
                              const std::function<std::string(int64_t, int64_t)>& consequence);

}  // namespace noisefast
