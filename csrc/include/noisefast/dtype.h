// Storage dtypes the kernels accept, as seen by code that must not include torch headers (.cu).
#pragma once

namespace noisefast {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

}  // namespace noisefast
