#pragma once
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hal_ext {

// The losses have dtype out_dtype (common/loss_dtype.h).
at::Tensor joints_mse_loss(const at::Tensor& output, const at::Tensor& target,
                           const std::optional<at::Tensor>& target_weight, int64_t reduction,
                           std::optional<at::ScalarType> out_dtype = std::nullopt);

at::Tensor _joints_mse_loss_backward(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                     const std::optional<at::Tensor>& target_weight, int64_t reduction);

at::Tensor joints_kl_loss(const at::Tensor& output, const at::Tensor& target,
                          const std::optional<at::Tensor>& target_weight, int64_t reduction, double epsilon,
                          std::optional<at::ScalarType> out_dtype = std::nullopt);

// (loss, stats): stats (B, K, 2) holds each row's {lse, S} for the backward.
std::tuple<at::Tensor, at::Tensor> _joints_kl_loss_forward(const at::Tensor& output, const at::Tensor& target,
                                                           const std::optional<at::Tensor>& target_weight,
                                                           int64_t reduction, double epsilon,
                                                           std::optional<at::ScalarType> out_dtype = std::nullopt);

at::Tensor _joints_kl_loss_backward(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                    const std::optional<at::Tensor>& target_weight, const at::Tensor& stats,
                                    int64_t reduction, double epsilon);

// (loss, grad): the forward and the gradient for a unit incoming gradient (the CPU autograd paths'
// forwards for float/double; elsewhere composed of the forward and the backward).
std::tuple<at::Tensor, at::Tensor> _joints_mse_loss_with_grad(const at::Tensor& output, const at::Tensor& target,
                                                              const std::optional<at::Tensor>& target_weight,
                                                              int64_t reduction,
                                                              std::optional<at::ScalarType> out_dtype = std::nullopt);

std::tuple<at::Tensor, at::Tensor> _joints_kl_loss_with_grad(const at::Tensor& output, const at::Tensor& target,
                                                             const std::optional<at::Tensor>& target_weight,
                                                             int64_t reduction, double epsilon,
                                                             std::optional<at::ScalarType> out_dtype = std::nullopt);

namespace joints_loss {
// Whether the CPU forward can write the unit gradient itself: float or double output (half types would
// round the unit gradient before the incoming gradient scales it).
bool fused_grad_supported(const at::Tensor& output);

// The forward, then the backward with a unit incoming gradient (every other dtype and device).
std::tuple<at::Tensor, at::Tensor> joints_mse_loss_with_grad_composite(const at::Tensor& output,
                                                                       const at::Tensor& target,
                                                                       const std::optional<at::Tensor>& target_weight,
                                                                       int64_t reduction,
                                                                       std::optional<at::ScalarType> out_dtype);
std::tuple<at::Tensor, at::Tensor> joints_kl_loss_with_grad_composite(const at::Tensor& output,
                                                                      const at::Tensor& target,
                                                                      const std::optional<at::Tensor>& target_weight,
                                                                      int64_t reduction, double epsilon,
                                                                      std::optional<at::ScalarType> out_dtype);
}  // namespace joints_loss

}  // namespace hal_ext
