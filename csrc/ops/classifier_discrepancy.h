#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace hal_ext {

at::Tensor classifier_discrepancy(const at::Tensor& predictions1, const at::Tensor& predictions2);

std::tuple<at::Tensor, at::Tensor> _classifier_discrepancy_backward(const at::Tensor& grad,
                                                                     const at::Tensor& predictions1,
                                                                     const at::Tensor& predictions2);

// The forward and the gradients for a unit incoming gradient: (loss, grad_predictions1, grad_predictions2).
std::tuple<at::Tensor, at::Tensor, at::Tensor> _classifier_discrepancy_with_grad(const at::Tensor& predictions1,
                                                                                 const at::Tensor& predictions2);

namespace cd_detail {
// Whether the CPU forward can write the unit gradients itself: float or double predictions (half types
// would round the unit gradient before the incoming gradient scales it).
bool fused_grad_supported(const at::Tensor& predictions);

// The forward, then the backward with a unit incoming gradient (every other dtype and device).
std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_discrepancy_with_grad_composite(
    const at::Tensor& predictions1, const at::Tensor& predictions2);
}  // namespace cd_detail

}  // namespace hal_ext
