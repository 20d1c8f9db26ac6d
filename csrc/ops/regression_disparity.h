#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hal_ext {

// Integer codes of the fused RegressionDisparity.
enum class DisparityMode : int64_t { Min = 0, Max = 1 };
enum class LabelGenerator : int64_t { Truncated = 0, Fast = 1 };
enum class DisparityCriterion : int64_t { MSE = 0, KL = 1 };

at::Tensor regression_disparity(const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight,
                                int64_t mode, double sigma, int64_t generator, int64_t criterion, int64_t reduction,
                                double epsilon);

// (loss, peaks (B, K, 2) int64 {x, y}, stats (B, K, 2) {lse, S} of the KL rows)
std::tuple<at::Tensor, at::Tensor, at::Tensor> _regression_disparity_forward(
    const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
    int64_t generator, int64_t criterion, int64_t reduction, double epsilon);

at::Tensor _regression_disparity_backward(const at::Tensor& grad, const at::Tensor& y_adv,
                                          const std::optional<at::Tensor>& weight, const at::Tensor& peaks,
                                          const at::Tensor& stats, int64_t mode, double sigma, int64_t generator,
                                          int64_t criterion, int64_t reduction, double epsilon);

}  // namespace hal_ext
