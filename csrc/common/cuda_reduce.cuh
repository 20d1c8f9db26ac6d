#pragma once
// Deterministic sums on the GPU: a fixed shuffle tree inside each warp, then warp partials in a
// fixed order, then (when more than one block is needed) the block partials in block order by a
// second kernel. No atomics, so results are bitwise reproducible. Small inputs take one launch.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstdint>

#include "common/cuda_launch.cuh"

namespace hal_ext {
namespace cuda {

constexpr int kReduceThreads = 512;
constexpr int64_t kSingleBlockMax = int64_t(1) << 17;  // up to this many terms: one block, one launch
constexpr int64_t kMaxBlocks = 1024;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

// Sum over the block; the result is valid in thread 0. blockDim.x must be a multiple of 32.
template <typename T>
__device__ T block_sum(T v) {
  HAL_SHARED(unsigned char, raw, 32 * sizeof(double));
  T* warp_partials = reinterpret_cast<T*>(raw);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  if (lane == 0) warp_partials[warp] = v;
  __syncthreads();
  const int warps = blockDim.x >> 5;
  v = (threadIdx.x < warps) ? warp_partials[threadIdx.x] : T(0);
  if (warp == 0) v = warp_sum(v);
  __syncthreads();  // warp_partials may be reused by a following call
  return v;
}

// term(i) -> acc_t for i in [0, n); finish(total) writes the result. With one block the total is
// finished directly; otherwise each block writes its partial sum.
template <typename acc_t, typename Term, typename Finish>
__global__ void sum_terms_kernel(int64_t n, Term term, Finish finish, acc_t* partials) {
  acc_t s = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) s += term(i);
  s = block_sum(s);
  if (threadIdx.x == 0) {
    if (gridDim.x == 1) finish(s);
    else partials[blockIdx.x] = s;
  }
}

template <typename acc_t, typename Finish>
__global__ void sum_partials_kernel(const acc_t* partials, int64_t n, Finish finish) {
  acc_t s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = block_sum(s);
  if (threadIdx.x == 0) finish(s);
}

// Launches the deterministic sum of term(i), i < n, on the current stream (of `like`'s device: the
// caller holds a DeviceGuard).
template <typename acc_t, typename Term, typename Finish>
void launch_ordered_sum(const at::Tensor& like, int64_t n, Term term, Finish finish) {
  const int64_t blocks = n <= kSingleBlockMax
      ? 1
      : std::min<int64_t>(kMaxBlocks, (n + kReduceThreads * 8 - 1) / (kReduceThreads * 8));
  if (blocks == 1) {
    launch(sum_terms_kernel<acc_t, Term, Finish>, {1, kReduceThreads}, n, term, finish, nullptr);
    return;
  }
  const auto acc_dtype = sizeof(acc_t) == sizeof(double) ? at::kDouble : at::kFloat;
  at::Tensor partials = at::empty({blocks}, like.options().dtype(acc_dtype));
  acc_t* p = static_cast<acc_t*>(partials.data_ptr());
  launch(sum_terms_kernel<acc_t, Term, Finish>, {grid_dim(blocks, max_grid_x()), kReduceThreads}, n, term, finish, p);
  launch(sum_partials_kernel<acc_t, Finish>, {1, kReduceThreads}, p, blocks, finish);
}

// Blocks of `threads` threads for a grid-stride loop over n elements: one element per thread up to
// kMaxElementwiseBlocks blocks (or the device's grid limit), more grid-stride steps beyond.
constexpr int64_t kMaxElementwiseBlocks = 65535 * 8;
inline unsigned elementwise_blocks(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return grid_dim(std::max<int64_t>(1, b), std::min(kMaxElementwiseBlocks, max_grid_x()));
}

}  // namespace cuda
}  // namespace hal_ext
