#pragma once
// Elementwise CUDA kernels with several loads in flight per thread. Each thread takes kUnroll elements
// per grid-stride step, blockDim.x apart (so that each of its loads is coalesced across the warp), and
// issues all their loads before computing and storing any. With one load in flight per thread, the
// H200's memory latency stays uncovered: shift_log's kernels, written that way, moved 2.4 TB/s where
// Triton's moved 4.3 (benchmarks/results/h200/kernel_profile.txt, 2026-12-04).
#include <cstdint>

#include "common/cuda_reduce.cuh"

namespace hal_ext {
namespace cuda {

constexpr int kUnroll = 4;

// Blocks of `threads` threads for n elements, kUnroll per thread per grid-stride step (elementwise_blocks
// over the steps' first elements).
inline unsigned unrolled_blocks(int64_t n, int threads) {
  return elementwise_blocks((n + kUnroll - 1) / kUnroll, threads);
}

// store(i, load(i)) for every i in [0, n): the loads of a thread's kUnroll elements first, then their
// stores. load's value type must be default-constructible.
template <typename Load, typename Store>
__device__ __forceinline__ void for_each_unrolled(int64_t n, const Load& load, const Store& store) {
  using Value = decltype(load(int64_t(0)));
  const int64_t block = blockDim.x;
  const int64_t step = static_cast<int64_t>(gridDim.x) * block * kUnroll;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * block * kUnroll + threadIdx.x; first < n; first += step) {
    Value v[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = first + k * block;
      if (i < n) v[k] = load(i);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int64_t i = first + k * block;
      if (i < n) store(i, v[k]);
    }
  }
}

}  // namespace cuda
}  // namespace hal_ext
