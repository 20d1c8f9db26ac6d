#pragma once
// Row kernels of the keypoint losses on the GPU (math in ops/joints_loss_math.h): one block per
// (b, k) row of n pixels, fixed reduction trees (deterministic). The target is a functor
// `target(row, p)` so that the fused regression disparity can compute it on the fly. The grid may
// have fewer blocks than rows (row_grid): each block takes rows blockIdx.x + i * gridDim.x.

#include <cstdint>

#include "common/cuda_reduce.cuh"
#include "ops/joints_loss_math.h"

namespace hal_ext {
namespace joints_loss_cuda {

namespace math = joints_loss_math;
constexpr int kRowThreads = 256;

// The grid of a row kernel: one block per row, at most the device's grid.x.
inline unsigned row_grid(int64_t rows) { return cuda::grid_dim(rows, cuda::max_grid_x()); }

template <typename T>
__device__ T broadcast_sum(T v) {
  HAL_SHARED(unsigned char, raw, sizeof(double));
  T s = cuda::block_sum(v);
  if (threadIdx.x == 0) *reinterpret_cast<T*>(raw) = s;
  __syncthreads();
  s = *reinterpret_cast<T*>(raw);
  __syncthreads();
  return s;
}

template <typename T>
__device__ T broadcast_max(T v) {
  HAL_SHARED(unsigned char, raw, 33 * sizeof(double));
  T* part = reinterpret_cast<T*>(raw);
  for (int o = 16; o > 0; o >>= 1) v = math::max_nan_ignoring<T>(v, __shfl_down_sync(0xffffffffu, v, o));
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T m = part[0];
    for (int i = 1; i < warps; ++i) m = math::max_nan_ignoring<T>(m, part[i]);
    part[32] = m;
  }
  __syncthreads();
  v = part[32];
  __syncthreads();
  return v;
}

// rows_out[r] = w_r * row_loss / none_div for r < rows (block-stride over rows: the grid may be
// smaller than the row count); KL rows also write stats[r] = {lse, S} unless stats is null.
template <typename scalar_t, typename acc_t, bool kKL, typename Target>
__global__ void row_forward_kernel(const scalar_t* z, Target target, const acc_t* w, int64_t rows, int64_t n,
                                   acc_t eps, acc_t none_div, acc_t* rows_out, acc_t* stats) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const scalar_t* zr = z + r * n;
    target.prepare(r);
    acc_t loss;
    if constexpr (kKL) {
      acc_t m = -static_cast<acc_t>(INFINITY), S = 0;
      for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        m = math::max_nan_ignoring<acc_t>(m, static_cast<acc_t>(zr[p]));
        S += static_cast<acc_t>(target(r, p)) + eps;
      }
      m = broadcast_max(m);
      S = broadcast_sum(S);
      acc_t Z = 0, A = 0;
      for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        const acc_t zp = static_cast<acc_t>(zr[p]);
        Z += hal_exp(zp - m);
        A += math::kl_term<acc_t>((static_cast<acc_t>(target(r, p)) + eps) / S, zp);
      }
      Z = cuda::block_sum(Z);
      A = cuda::block_sum(A);
      if (threadIdx.x == 0) {
        const acc_t lse = m + hal_log(Z);
        loss = math::kl_row_loss<acc_t>(A, S / S, lse, n);
        if (stats) {
          stats[2 * r] = lse;
          stats[2 * r + 1] = S;
        }
      }
    } else {
      acc_t s = 0;
      for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        s += math::mse_term<acc_t>(static_cast<acc_t>(zr[p]), static_cast<acc_t>(target(r, p)));
      }
      loss = cuda::block_sum(s);
    }
    if (threadIdx.x == 0) rows_out[r] = (w ? loss * w[r] : loss) / none_div;
  }
}

// grad[r, p] for r < rows (block-stride): g = grad (none: per row; mean: scalar) read on the device;
// scale = g * w / divisor.
template <typename scalar_t, typename acc_t, bool kKL, typename Target>
__global__ void row_backward_kernel(const acc_t* grad, bool mean, const scalar_t* z, Target target, const acc_t* w,
                                    const acc_t* stats, int64_t rows, int64_t n, acc_t eps, acc_t divisor,
                                    scalar_t* out) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    target.prepare(r);
    acc_t scale = mean ? grad[0] : grad[r];
    if (w) scale *= w[r];
    scale /= divisor;
    const scalar_t* zr = z + r * n;
    scalar_t* o = out + r * n;
    if constexpr (kKL) {
      const acc_t lse = stats[2 * r], S = stats[2 * r + 1], T = S / S, scale_over_S = scale / S;
      for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        const acc_t x = static_cast<acc_t>(target(r, p)) + eps;
        o[p] = static_cast<scalar_t>(math::kl_grad<acc_t>(static_cast<acc_t>(zr[p]), x, lse, T, scale, scale_over_S));
      }
    } else {
      for (int64_t p = threadIdx.x; p < n; p += blockDim.x) {
        o[p] = static_cast<scalar_t>(
            math::mse_grad<acc_t>(static_cast<acc_t>(zr[p]), static_cast<acc_t>(target(r, p)), scale));
      }
    }
  }
}

template <typename acc_t>
struct RowsTerm {
  const acc_t* rows;
  __device__ acc_t operator()(int64_t i) const { return rows[i]; }
};

template <typename acc_t>
struct WriteMeanOf {
  acc_t* out;
  acc_t count;
  __device__ void operator()(acc_t total) const { *out = total / count; }
};

}  // namespace joints_loss_cuda
}  // namespace hal_ext
