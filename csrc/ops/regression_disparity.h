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

// (loss, grad_y_adv for a unit incoming gradient): the CPU autograd path's forward for float/double
// y_adv; elsewhere composed of the forward and the backward.
std::tuple<at::Tensor, at::Tensor> _regression_disparity_with_grad(const at::Tensor& y, const at::Tensor& y_adv,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   int64_t mode, double sigma, int64_t generator,
                                                                   int64_t criterion, int64_t reduction,
                                                                   double epsilon);

namespace regression_disparity_detail {
// Whether the CPU forward can write the unit gradient itself: float or double y_adv (half types would
// round the unit gradient before the incoming gradient scales it).
bool fused_grad_supported(const at::Tensor& y_adv);

// The forward, then the backward with a unit incoming gradient (every other dtype and device).
std::tuple<at::Tensor, at::Tensor> with_grad_composite(const at::Tensor& y, const at::Tensor& y_adv,
                                                       const std::optional<at::Tensor>& weight, int64_t mode,
                                                       double sigma, int64_t generator, int64_t criterion,
                                                       int64_t reduction, double epsilon);
}  // namespace regression_disparity_detail

}  // namespace hal_ext
