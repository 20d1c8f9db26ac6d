// CUDA kernels of hal_ext::regression_disparity (math in pseudo_label_math.h, joints_loss_math.h).
// Launch 1: one block per map, the first argmax of y -> peaks (B, K, 2). Launch 2: one block per
// (b, k) row of y_adv (at most grid.x blocks, each then takes several rows); the sample's K windows sit
// in shared memory (K <= 1024; more keypoints: evaluated from the peaks) and every pixel's target is
// computed on the fly ('min': G_k; 'max': clamp(sum_{j != k} G_j, 0, 1), exact double sum), then the
// keypoint-loss row kernel runs on it. 'mean' adds one ordered sum. The backward rebuilds the
// targets from the peaks and writes only grad_y_adv. No maps, no host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "ops/cuda/joints_loss_rows.cuh"
#include "ops/joints_loss_common.h"
#include "ops/pseudo_label_math.h"
#include "ops/regression_disparity.h"
#include "ops/regression_disparity_args.h"

namespace hal_ext {
namespace {

namespace plm = pseudo_label_math;
using namespace joints_loss_cuda;
using cuda::LaunchConfig;
using regression_disparity_args::Args;
using regression_disparity_args::check_args;

// peaks[m] = the peak of map m (first argmax) for m < maps, block-stride over the maps.
template <typename scalar_t>
__global__ void peaks_kernel(const scalar_t* y, int64_t maps, int64_t n, int64_t W, bool max_rule, int64_t* peaks) {
  using acc_t = at::opmath_type<scalar_t>;
  HAL_SHARED(acc_t, values, 32);
  HAL_SHARED(int64_t, indices, 32);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t m = blockIdx.x; m < maps; m += gridDim.x) {
    const scalar_t* p = y + m * n;
    plm::ArgMax<acc_t> best = plm::argmax_init<acc_t>();
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      best = plm::argmax_combine(best, plm::ArgMax<acc_t>{static_cast<acc_t>(p[i]), i});
    }
    for (int o = 16; o > 0; o >>= 1) {
      plm::ArgMax<acc_t> other{__shfl_down_sync(0xffffffffu, best.value, o),
                               __shfl_down_sync(0xffffffffu, best.index, o)};
      best = plm::argmax_combine(best, other);
    }
    if (lane == 0) {
      values[warp] = best.value;
      indices[warp] = best.index;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
        best = plm::argmax_combine(best, {values[w], indices[w]});
      }
      int64_t px = 0, py = 0;
      if (n > 0) plm::peak_position(best.index, best.value, W, max_rule, &px, &py);
      peaks[2 * m] = px;
      peaks[2 * m + 1] = py;
    }
    __syncthreads();  // values/indices are rewritten for the next map
  }
}

// The target of row r = b * K + k at pixel p, from the K windows of sample b: kept in shared memory
// when 2 K axes fit the default 48 KiB (K <= 1024), otherwise evaluated from the peaks on the fly.
struct DisparityTarget {
  const int64_t* peaks;
  int64_t K, H, W;
  double sigma;
  float den;
  bool fast, max_mode, cached;
  __device__ plm::Axis axis(int64_t b, int64_t j, int dim) const {
    const int64_t pos = peaks[2 * (b * K + j) + dim], extent = dim == 0 ? W : H;
    // The host checks saved peaks only on the CPU (regression_disparity_args::check_saved); empty heatmaps
    // have their (0, 0) peaks, addressing nothing.
    CUDA_KERNEL_ASSERT((H * W == 0 || (pos >= 0 && pos < extent)) && "peaks must lie inside the heatmaps");
    return fast ? plm::fast_axis(pos, sigma, extent) : plm::truncated_axis(pos, sigma, extent);
  }
  __device__ void prepare(int64_t r) const {
    if (!cached) return;
    HAL_DYNAMIC_SHARED(plm::Axis, axes);  // 2 K: x axes, then y axes
    const int64_t b = r / K;
    __syncthreads();  // the previous row of this block may still read the axes
    for (int64_t j = threadIdx.x; j < K; j += blockDim.x) {
      axes[j] = axis(b, j, 0);
      axes[K + j] = axis(b, j, 1);
    }
    __syncthreads();
  }
  __device__ float value(int64_t b, int64_t j, int64_t X, int64_t Y) const {
    HAL_DYNAMIC_SHARED(plm::Axis, axes);
    const plm::Axis ax = cached ? axes[j] : axis(b, j, 0);
    const plm::Axis ay = cached ? axes[K + j] : axis(b, j, 1);
    if (!plm::in_axis(X, ax) || !plm::in_axis(Y, ay)) return 0.0f;
    const int32_t dx = plm::offset32(X, ax.centre), dy = plm::offset32(Y, ay.centre);
    return fast ? plm::gaussian_off<true>(dx, dy, den) : plm::gaussian_off<false>(dx, dy, den);
  }
  __device__ float operator()(int64_t r, int64_t p) const {
    const int64_t b = r / K, k = r % K, X = p % W, Y = p / W;
    const float own = value(b, k, X, Y);
    if (!max_mode) return own;
    double total = 0.0;
    for (int64_t j = 0; j < K; ++j) total += static_cast<double>(value(b, j, X, Y));
    return plm::clamp_false(total - static_cast<double>(own));
  }
};

// Dynamic shared memory of the row kernels: the sample's 2 K axes, or none (DisparityTarget::cached).
size_t axes_bytes(const Args& a) {
  const size_t bytes = 2 * static_cast<size_t>(a.K) * sizeof(plm::Axis);
  return static_cast<int64_t>(bytes) <= cuda::max_dynamic_shared() ? bytes : 0;
}

DisparityTarget make_target(const Args& a, const int64_t* peaks) {
  return {peaks, a.K, a.H, a.W, a.sigma, plm::gaussian_denominator(a.sigma), a.fast, a.max_mode, axes_bytes(a) > 0};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_cuda(const at::Tensor& y, const at::Tensor& y_adv,
                                                            const std::optional<at::Tensor>& weight, int64_t mode,
                                                            double sigma, int64_t generator, int64_t criterion,
                                                            int64_t reduction, double epsilon) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_heatmap(y, "y");
  check_same_device(y_adv, "y_adv", y, "y");
  check_same_shape(y_adv, "y_adv", y, "y");
  cuda::DeviceGuard guard(y_adv.device());
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const at::Tensor yc = y.contiguous(), z = y_adv.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const int64_t rows = a.B * a.K, n = a.H * a.W;
  at::Tensor peaks = at::zeros({a.B, a.K, 2}, y.options().dtype(at::kLong));
  at::Tensor stats = at::zeros({a.B, a.K, 2}, y.options().dtype(acc));
  at::Tensor row_loss = at::zeros({rows}, y.options().dtype(acc));
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "regression_disparity_peaks", [&] {
      cuda::launch(peaks_kernel<scalar_t>, {row_grid(rows), kRowThreads}, yc.const_data_ptr<scalar_t>(), rows, n,
                   a.W, !a.fast, peaks.mutable_data_ptr<int64_t>());
    });
    const size_t shared = axes_bytes(a);
    // KL statistics of empty maps stay (0, 0), as on the CPU
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const DisparityTarget target = make_target(a, peaks.const_data_ptr<int64_t>());
      const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
      const LaunchConfig rows_config{row_grid(rows), kRowThreads, shared};
      if (a.kl) {
        cuda::launch(row_forward_kernel<scalar_t, acc_t, true, DisparityTarget>, rows_config,
            z.const_data_ptr<scalar_t>(), target, wp, rows, n, static_cast<acc_t>(epsilon), acc_t(1),
            row_loss.mutable_data_ptr<acc_t>(), n > 0 ? stats.mutable_data_ptr<acc_t>() : nullptr);
      } else {
        cuda::launch(row_forward_kernel<scalar_t, acc_t, false, DisparityTarget>, rows_config,
            z.const_data_ptr<scalar_t>(), target, wp, rows, n, acc_t(0), static_cast<acc_t>(n),
            row_loss.mutable_data_ptr<acc_t>(), nullptr);
      }
    });
  }
  at::Tensor out;
  if (!a.mean) {
    out = row_loss.view({a.B, a.K});
  } else {
    out = at::empty({}, row_loss.options());
    AT_DISPATCH_FLOATING_TYPES(row_loss.scalar_type(), "regression_disparity_mean_cuda", [&] {
      cuda::launch_ordered_sum<scalar_t>(row_loss, rows, RowsTerm<scalar_t>{row_loss.const_data_ptr<scalar_t>()},
                                         WriteMeanOf<scalar_t>{out.mutable_data_ptr<scalar_t>(),
                                                               static_cast<scalar_t>(rows)});
    });
  }
  return {out, peaks, stats};
}

at::Tensor disparity_cuda(const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight,
                          int64_t mode, double sigma, int64_t generator, int64_t criterion, int64_t reduction,
                          double epsilon) {
  return std::get<0>(forward_cuda(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon));
}

at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight,
                         const at::Tensor& peaks, const at::Tensor& stats, int64_t mode, double sigma,
                         int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_grad(grad, y_adv, reduction, a.B, a.K);
  regression_disparity_args::check_saved(y_adv, peaks, stats, a);
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const int64_t rows = a.B * a.K, n = a.H * a.W;
  cuda::DeviceGuard guard(y_adv.device());
  const at::Tensor z = y_adv.contiguous(), pk = peaks.contiguous(), st = stats.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  if (result.numel() == 0) return result;
  const LaunchConfig rows_config{row_grid(rows), kRowThreads, axes_bytes(a)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const DisparityTarget target = make_target(a, pk.const_data_ptr<int64_t>());
    const acc_t row_div = a.kl ? acc_t(1) : static_cast<acc_t>(n);
    const acc_t divisor = a.mean ? static_cast<acc_t>(rows) * row_div : row_div;
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    if (a.kl) {
      cuda::launch(row_backward_kernel<scalar_t, acc_t, true, DisparityTarget>, rows_config,
          g.const_data_ptr<acc_t>(), a.mean, z.const_data_ptr<scalar_t>(), target, wp, st.const_data_ptr<acc_t>(),
          rows, n, static_cast<acc_t>(epsilon), divisor, result.mutable_data_ptr<scalar_t>());
    } else {
      cuda::launch(row_backward_kernel<scalar_t, acc_t, false, DisparityTarget>, rows_config,
          g.const_data_ptr<acc_t>(), a.mean, z.const_data_ptr<scalar_t>(), target, wp, st.const_data_ptr<acc_t>(),
          rows, n, acc_t(0), divisor, result.mutable_data_ptr<scalar_t>());
    }
  });
  return result;
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("regression_disparity", &disparity_cuda);
  m.impl("_regression_disparity_forward", &forward_cuda);
  m.impl("_regression_disparity_backward", &backward_cuda);
}

}  // namespace hal_ext
