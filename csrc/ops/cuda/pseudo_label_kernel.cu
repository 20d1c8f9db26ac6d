// CUDA kernels of hal_ext::pseudo_label_2d and hal_ext::fast_pseudo_label_2d (math in
// pseudo_label_math.h).
//
//   (x, y)_{b,k}       = first argmax of y[b, k] over H*W (NaN = max); truncated variant: (0, 0) unless max > 0
//   ground_truth[b, k] = G(X, Y; x_{b,k}, y_{b,k})   (tllib's truncated, or the Fast thresholded, Gaussian)
//   ground_false[b, k] = clamp(sum_{j != k} ground_truth[b, j], 0, 1)
//
// One launch, no table, no host synchronisation (CUDA-graph capturable). Block (b, s) of the S blocks
// of sample b: (1) its warps find the K peaks of sample b (one warp per map, lane-strided scan,
// shuffle tree with the shared combine rule) and keep the K windows in shared memory (beyond the
// device's opt-in shared memory, about 9,700 keypoints: in a global workspace, one copy per block);
// (2) each thread takes pixels of slice s of the sample, forms the exact (double) sum of the
// Gaussians whose window covers the pixel, and writes that pixel of every ground_truth[b, k] and
// ground_false[b, k] once (coalesced). The S blocks of a sample repeat step (1); the repeated reads
// come from L2. S is chosen so the grid fills the device (S = 1 when B >= #SMs); more than 2^31 - 1
// blocks' worth of (b, s) units are taken by a block-stride loop.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
#include "common/cuda_launch.cuh"
#include "ops/pseudo_label.h"
#include "ops/pseudo_label_math.h"

namespace hal_ext {
namespace {

namespace math = pseudo_label_math;

constexpr int kThreads = 512;
constexpr int kWindowInts = 6;  // x_lo, x_hi, y_lo, y_hi, x_centre, y_centre

__device__ __forceinline__ int32_t centre32(int64_t c) {
  return static_cast<int32_t>(math::clip64(c, -(int64_t(1) << 30), (int64_t(1) << 31) - 1));
}

// Work unit u = b * S + s (sample b, pixel slice s), u = blockIdx.x + i * gridDim.x. The windows live
// in dynamic shared memory, or (more keypoints than fit) in this block's part of `workspace`.
template <typename scalar_t, bool kFast>
__global__ void __launch_bounds__(kThreads)
pseudo_label_kernel(const scalar_t* __restrict__ y, float* __restrict__ gt, float* __restrict__ gf,
                    int32_t* __restrict__ workspace, int64_t B, int64_t K, int64_t H, int64_t W, int S, double sigma) {
  using acc_t = at::opmath_type<scalar_t>;
  HAL_DYNAMIC_SHARED(int32_t, shared_windows);
  int32_t* windows = workspace ? workspace + blockIdx.x * K * kWindowInts : shared_windows;
  const int64_t HW = H * W;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  for (int64_t unit = blockIdx.x; unit < B * S; unit += gridDim.x) {
    const int64_t b = unit / S;
    const int s = static_cast<int>(unit % S);

    // (1) the K peaks of sample b.
    for (int64_t k = warp; k < K; k += warps) {
      const scalar_t* p = y + (b * K + k) * HW;
      math::ArgMax<acc_t> best = math::argmax_init<acc_t>();
#pragma unroll 4
      for (int64_t i = lane; i < HW; i += 32) {
        const acc_t v = static_cast<acc_t>(p[i]);
        if (math::argmax_better(v, i, best.value, best.index)) best = {v, i};
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        math::ArgMax<acc_t> other;
        other.value = __shfl_down_sync(0xffffffffu, best.value, offset);
        other.index = __shfl_down_sync(0xffffffffu, best.index, offset);
        best = math::argmax_combine(best, other);
      }
      if (lane == 0) {
        int64_t px, py;
        math::peak_position(best.index, best.value, W, /*max_rule=*/!kFast, &px, &py);
        const math::Axis ax = kFast ? math::fast_axis(px, sigma, W) : math::truncated_axis(px, sigma, W);
        const math::Axis ay = kFast ? math::fast_axis(py, sigma, H) : math::truncated_axis(py, sigma, H);
        int32_t* w = windows + k * kWindowInts;
        w[0] = static_cast<int32_t>(ax.lo);
        w[1] = static_cast<int32_t>(ax.hi);
        w[2] = static_cast<int32_t>(ay.lo);
        w[3] = static_cast<int32_t>(ay.hi);
        w[4] = centre32(ax.centre);
        w[5] = centre32(ay.centre);
      }
    }
    __syncthreads();

    // (2) slice s of the sample's pixels, every keypoint.
    const float den = math::gaussian_denominator(sigma);
    const int64_t chunk = (HW + S - 1) / S;
    const int64_t p0 = s * chunk, p1 = p0 + chunk < HW ? p0 + chunk : HW;
    float* gt_b = gt + b * K * HW;
    float* gf_b = gf + b * K * HW;
    for (int64_t p = p0 + threadIdx.x; p < p1; p += blockDim.x) {
      const int32_t Y = static_cast<int32_t>(p / W), X = static_cast<int32_t>(p - static_cast<int64_t>(Y) * W);
      double total = 0.0;
      for (int64_t j = 0; j < K; ++j) {
        const int32_t* w = windows + j * kWindowInts;
        if (X >= w[0] && X < w[1] && Y >= w[2] && Y < w[3]) {
          total += static_cast<double>(
              math::gaussian_off<kFast>(math::offset32(X, w[4]), math::offset32(Y, w[5]), den));
        }
      }
      for (int64_t k = 0; k < K; ++k) {
        const int32_t* w = windows + k * kWindowInts;
        float own = 0.0f;
        if (X >= w[0] && X < w[1] && Y >= w[2] && Y < w[3]) {
          own = math::gaussian_off<kFast>(math::offset32(X, w[4]), math::offset32(Y, w[5]), den);
        }
        gt_b[k * HW + p] = own;
        gf_b[k * HW + p] = math::clamp_false(total - static_cast<double>(own));
      }
    }
    __syncthreads();  // the windows are rewritten for the next unit
  }
}

template <bool kFast>
std::tuple<at::Tensor, at::Tensor> pseudo_label_cuda(const at::Tensor& input, double sigma) {
  check_pseudo_label_args(input, sigma);
  cuda::DeviceGuard guard(input.device());
  const at::Tensor y = input.contiguous();
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const auto options = y.options().dtype(at::kFloat);
  at::Tensor gt = at::empty({B, K, H, W}, options), gf = at::empty({B, K, H, W}, options);
  if (gt.numel() == 0) return {gt, gf};
  const c10::DeviceIndex device = input.device().index();
  const size_t window_bytes = static_cast<size_t>(K) * kWindowInts * sizeof(int32_t);
  const bool in_shared = static_cast<int64_t>(window_bytes) <= cuda::max_dynamic_shared_optin(device);
  const int64_t HW = H * W;
  int64_t S = std::max<int64_t>(1, std::min<int64_t>(4, cuda::multiprocessors(device) / std::max<int64_t>(B, 1)));
  S = std::max<int64_t>(1, std::min<int64_t>(S, (HW + kThreads - 1) / kThreads));
  const unsigned grid = cuda::grid_dim(B * S, cuda::max_grid_x());
  at::Tensor workspace;
  if (!in_shared) workspace = at::empty({static_cast<int64_t>(grid), K, kWindowInts}, y.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pseudo_label_2d_cuda", [&] {
    auto kernel = pseudo_label_kernel<scalar_t, kFast>;
    const size_t shared = in_shared ? window_bytes : 0;
    if (static_cast<int64_t>(shared) > cuda::max_dynamic_shared()) cuda::allow_dynamic_shared(kernel, shared);
    cuda::launch(kernel, {grid, kThreads, shared}, y.const_data_ptr<scalar_t>(), gt.mutable_data_ptr<float>(),
                 gf.mutable_data_ptr<float>(), in_shared ? nullptr : workspace.mutable_data_ptr<int32_t>(), B, K, H,
                 W, static_cast<int>(S), sigma);
  });
  return {gt, gf};
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("pseudo_label_2d", &pseudo_label_cuda<false>);
  m.impl("fast_pseudo_label_2d", &pseudo_label_cuda<true>);
}

}  // namespace hal_ext
