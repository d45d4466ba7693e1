// How the per-sample reductions of the CPU kernels (the pseudo-Huber loss, the sigma gradient of the
// consistency output) split their work into parallel tasks.
#pragma once

#include <stdint.h>

#include "noisefast/host_device.h"

namespace noisefast {

// Sample b's D elements are cut into `per_sample` chunks of at most `chunk` elements; task t covers
// chunk t % per_sample of sample t / per_sample. A sample with no elements still owns one (empty)
// chunk, so every sample gets a partial sum.
struct SampleChunks {
  int64_t samples, elements, chunk, per_sample;

  NF_HOST_DEVICE SampleChunks(int64_t samples_, int64_t elements_, int64_t chunk_)
      : samples(samples_), elements(elements_), chunk(chunk_),
        per_sample(elements_ > 0 ? (elements_ + chunk_ - 1) / chunk_ : 1) {}

  NF_HOST_DEVICE int64_t tasks() const { return samples * per_sample; }
  NF_HOST_DEVICE int64_t sample_of(int64_t task) const { return task / per_sample; }
  NF_HOST_DEVICE int64_t begin_of(int64_t task) const { return (task % per_sample) * chunk; }
  NF_HOST_DEVICE int64_t end_of(int64_t task) const {
    const int64_t end = begin_of(task) + chunk;
    return end < elements ? end : elements;
  }
};

}  // namespace noisefast
