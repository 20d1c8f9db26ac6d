#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

#include "common/checks.h"

namespace hal_ext {

// tllib's PseudoLabelGenerator2d: (ground_truth, ground_false), float32, y's shape and device.
std::tuple<at::Tensor, at::Tensor> pseudo_label_2d(const at::Tensor& y, double sigma);

// tllib's FastPseudoLabelGenerator2d.
std::tuple<at::Tensor, at::Tensor> fast_pseudo_label_2d(const at::Tensor& y, double sigma);

// Argument checks shared by the CPU and CUDA kernels: y a (B, K, H, W) float tensor, sigma finite > 0.
inline void check_pseudo_label_args(const at::Tensor& y, double sigma) {
  check_float_tensor(y, "y");
  TORCH_CHECK_VALUE(y.dim() == 4, "y must be a 4-d heatmap tensor (B, K, H, W), got shape ", y.sizes());
  TORCH_CHECK_VALUE(sigma > 0 && sigma < 1e300, "sigma must be a finite number > 0, got ", sigma);
  TORCH_CHECK_VALUE(y.size(2) < (int64_t(1) << 31) && y.size(3) < (int64_t(1) << 31),
                    "y's height and width must be below 2^31, got shape ", y.sizes());
}

}  // namespace hal_ext
