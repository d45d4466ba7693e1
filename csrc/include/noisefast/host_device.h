// NF_HOST_DEVICE: functions of the shared headers compile for the host (g++) and, under nvcc,
// for both host and device.
#pragma once

#if defined(__CUDACC__)
#define NF_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define NF_HOST_DEVICE inline
#endif
