// CUDA kernels of hal_ext::pseudo_label_2d and hal_ext::fast_pseudo_label_2d (math in
// pseudo_label_math.h).
//
//   (x, y)_{b,k}       = first argmax of y[b, k] over H*W (NaN = max); truncated variant: (0, 0) unless max > 0
//   ground_truth[b, k] = G(X, Y; x_{b,k}, y_{b,k})   (tllib's truncated, or the Fast thresholded, Gaussian)
//   ground_false[b, k] = clamp(sum_{j != k} ground_truth[b, j], 0, 1)
//
// One launch, no table, no workspace, no host synchronisation (CUDA-graph capturable). Block
// (b, s) of the S blocks of sample b: (1) its warps find the K peaks of sample b (one warp per map,
// lane-strided scan, shuffle tree with the shared combine rule) and keep the K windows in shared
// memory; (2) each thread takes pixels of slice s of the sample, forms the exact (double) sum of the
// Gaussians whose window covers the pixel, and writes that pixel of every ground_truth[b, k] and
// ground_false[b, k] once (coalesced). The S blocks of a sample repeat step (1); the repeated reads
// come from L2. S is chosen so the grid fills the device (S = 1 when B >= #SMs).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "common/checks.h"
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

template <typename scalar_t, bool kFast>
__global__ void __launch_bounds__(kThreads)
pseudo_label_kernel(const scalar_t* __restrict__ y, float* __restrict__ gt, float* __restrict__ gf, int64_t K,
                    int64_t H, int64_t W, int S, double sigma) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ int32_t windows[];
  const int64_t b = blockIdx.x / S;
  const int s = blockIdx.x % S;
  const int64_t HW = H * W;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;

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
}

int multiprocessors(int device) {
  static int cached[64] = {0};
  if (device >= 0 && device < 64 && cached[device] > 0) return cached[device];
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device >= 0 && device < 64) cached[device] = count;
  return count;
}

template <bool kFast>
std::tuple<at::Tensor, at::Tensor> pseudo_label_cuda(const at::Tensor& input, double sigma) {
  check_pseudo_label_args(input, sigma);
  c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor y = input.contiguous();
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const auto options = y.options().dtype(at::kFloat);
  at::Tensor gt = at::empty({B, K, H, W}, options), gf = at::empty({B, K, H, W}, options);
  if (gt.numel() == 0) return {gt, gf};
  const int device = input.device().index();
  const size_t shared = static_cast<size_t>(K) * kWindowInts * sizeof(int32_t);
  int shared_max = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&shared_max, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  TORCH_CHECK_VALUE(shared <= static_cast<size_t>(shared_max), "y has ", K,
                    " keypoints; the CUDA kernel supports at most ", shared_max / (kWindowInts * sizeof(int32_t)),
                    " on this device");
  const int64_t HW = H * W;
  int64_t S = std::max<int64_t>(1, std::min<int64_t>(4, multiprocessors(device) / std::max<int64_t>(B, 1)));
  S = std::max<int64_t>(1, std::min<int64_t>(S, (HW + kThreads - 1) / kThreads));
  TORCH_CHECK_VALUE(B * S < (int64_t(1) << 31), "y's batch size ", B, " is too large for one launch");
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pseudo_label_2d_cuda", [&] {
    auto kernel = pseudo_label_kernel<scalar_t, kFast>;
    if (shared > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(shared)));
    }
    kernel<<<static_cast<unsigned>(B * S), kThreads, shared, stream>>>(
        y.const_data_ptr<scalar_t>(), gt.mutable_data_ptr<float>(), gf.mutable_data_ptr<float>(), K, H, W,
        static_cast<int>(S), sigma);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {gt, gf};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CUDA, m) {
  m.impl("pseudo_label_2d", &pseudo_label_cuda<false>);
  m.impl("fast_pseudo_label_2d", &pseudo_label_cuda<true>);
}

}  // namespace hal_ext
