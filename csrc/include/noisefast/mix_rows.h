// The mixup blend, one element: out = lam * a + (1 - lam) * b, where a = x[b_row][k] and
// b = x[index[b_row]][k] (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization").
//
// lam arrives as a double. Both weights are formed in double and each rounded once to the math type
// (float for float32, float16 and bfloat16 storage; double for float64), so that lam = 1 gives
// exactly (1, 0) and the output is exactly a; the blend is then computed in the math type and the
// result rounded once to the storage type. noisefast/reference/mix_rows.py and the
// Triton kernel (noisefast/triton/mix_rows.py) follow the same order of operations.
#pragma once

#include "noisefast/host_device.h"

namespace noisefast {

template <typename acc_t>
struct MixWeights {
  acc_t lam;           // weight of the row itself
  acc_t one_minus_lam; // weight of its partner row
};

template <typename acc_t>
NF_HOST_DEVICE MixWeights<acc_t> mix_weights(double lam) {
  return MixWeights<acc_t>{static_cast<acc_t>(lam), static_cast<acc_t>(1.0 - lam)};
}

template <typename acc_t>
NF_HOST_DEVICE acc_t mix_blend(acc_t a, acc_t b, MixWeights<acc_t> w) {
  return w.lam * a + w.one_minus_lam * b;
}

}  // namespace noisefast
