#pragma once
// Host-side argument checks of hal_ext::regression_disparity, shared by its CPU and CUDA kernels.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

#include "ops/joints_loss_common.h"

namespace hal_ext {
namespace regression_disparity_args {

struct Args {
  int64_t B, K, H, W;
  bool max_mode, fast, kl, mean;
  double sigma;
  int64_t rows() const { return B * K; }
  int64_t n() const { return H * W; }
};

inline Args check_args(const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                       int64_t generator, int64_t criterion, int64_t reduction) {
  joints_loss::check_heatmap(y_adv, "y_adv");
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "mode must be 0 ('min') or 1 ('max'), got ", mode);
  TORCH_CHECK_VALUE(generator == 0 || generator == 1, "generator must be 0 (truncated) or 1 (fast), got ", generator);
  TORCH_CHECK_VALUE(criterion == 0 || criterion == 1, "criterion must be 0 (MSE) or 1 (KL), got ", criterion);
  TORCH_CHECK_VALUE(sigma > 0 && sigma < 1e300, "sigma must be a finite number > 0, got ", sigma);
  joints_loss::check_reduction(reduction);
  Args a{y_adv.size(0), y_adv.size(1), y_adv.size(2), y_adv.size(3), mode == 1, generator == 1, criterion == 1,
         reduction == 1, sigma};
  TORCH_CHECK_VALUE(a.H < (int64_t(1) << 31) && a.W < (int64_t(1) << 31),
                    "y_adv's height and width must be below 2^31, got shape ", y_adv.sizes());
  joints_loss::check_weight(weight, y_adv, "y_adv", a.B, a.K, "weight");
  return a;
}

// The saved tensors of _regression_disparity_backward (peaks (B, K, 2) int64 {x, y}, stats (B, K, 2) of the
// accumulation dtype), for the CPU and CUDA kernels alike. The peaks address the heatmaps: on the host
// (CPU tensors) every one must lie inside them; a CUDA kernel asserts that where it reads them (a host
// check would synchronise). One pass over the B*K peaks.
inline void check_saved(const at::Tensor& y_adv, const at::Tensor& peaks, const at::Tensor& stats, const Args& a) {
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  TORCH_CHECK_VALUE(peaks.scalar_type() == at::kLong && peaks.numel() == 2 * a.rows() && peaks.device() == y_adv.device(),
                    "peaks must be the (B, K, 2) int64 tensor of _regression_disparity_forward, on ", y_adv.device(),
                    ", got ", peaks.scalar_type(), " ", peaks.sizes(), " on ", peaks.device());
  TORCH_CHECK_VALUE(stats.scalar_type() == acc && stats.numel() == 2 * a.rows() && stats.device() == y_adv.device(),
                    "stats must be the (B, K, 2) ", acc, " tensor of _regression_disparity_forward, on ",
                    y_adv.device(), ", got ", stats.scalar_type(), " ", stats.sizes(), " on ", stats.device());
  if (!peaks.is_cpu() || a.n() == 0) return;  // empty heatmaps: no kernel reads the peaks
  const at::Tensor pk = peaks.contiguous();
  const int64_t* p = pk.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < a.rows(); ++r) {
    TORCH_CHECK_VALUE(p[2 * r] >= 0 && p[2 * r] < a.W && p[2 * r + 1] >= 0 && p[2 * r + 1] < a.H,
                      "peaks must lie inside the ", a.H, " x ", a.W, " heatmaps, got (x, y) = (", p[2 * r], ", ",
                      p[2 * r + 1], ") at row ", r);
  }
}

}  // namespace regression_disparity_args
}  // namespace hal_ext
