// Where an element of a tensor draws from the noise stream: element i of the (row-major) data an
// op sees draws stream element position(i) (docs/design.md, "DTensors and the global index").
//
// A plain tensor, or a DTensor shard that is one contiguous range of its global tensor (Shard(0)
// of a row-major tensor, Replicate), draws offset + i: the `contiguous` case, which kernels serve
// with their Philox-block loops unchanged. A shard of a dimension d > 0 is a run of `segment`
// consecutive global elements every `stride` elements (segment = local size of d times the
// global inner size, stride = global size of d times the inner size, offset = the shard's start
// in d times the inner size), so that local element i is global element
//
//     offset + (i / segment) * stride + i % segment,
//
// and the element draws the noise the same element of the unsharded tensor draws under the same
// seed, whatever the number of ranks. Kernels serve that mapped case one element at a time
// (normal_at: a Philox call per element instead of per four), or segment by segment on the CPU.
#pragma once

#include <stdint.h>

#include "noisefast/host_device.h"

namespace noisefast {

struct StreamMap {
  int64_t offset;   // stream position of element 0, >= 0
  int64_t segment;  // elements per run, >= 1
  int64_t stride;   // stream positions from one run's start to the next's, >= segment

  // offset + i for every i: segment == stride (the public ops pass segment = stride = 1).
  NF_HOST_DEVICE bool contiguous() const { return segment == stride; }

  NF_HOST_DEVICE int64_t position(int64_t i) const { return offset + (i / segment) * stride + i % segment; }
};

}  // namespace noisefast
