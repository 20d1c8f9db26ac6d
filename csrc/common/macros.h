#pragma once
// HAL_HOST_DEVICE marks the op math that the CPU (C++) and CUDA kernels share, so the two
// paths evaluate the very same expressions.
#if defined(__CUDACC__)
#define HAL_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define HAL_HOST_DEVICE inline
#endif

// Loop pragmas usable inside macro arguments (e.g. the body of AT_DISPATCH_*). The CPU kernels are
// compiled with -fopenmp-simd: these request vectorisation, they do not start threads.
#define HAL_PRAGMA(x) _Pragma(#x)
#define HAL_SIMD HAL_PRAGMA(omp simd)
#define HAL_SIMD_SUM(var) HAL_PRAGMA(omp simd reduction(+ : var))
