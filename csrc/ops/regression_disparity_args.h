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

}  // namespace regression_disparity_args
}  // namespace hal_ext
