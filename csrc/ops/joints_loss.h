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

}  // namespace hal_ext
