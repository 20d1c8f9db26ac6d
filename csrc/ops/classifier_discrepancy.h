#pragma once
#include <ATen/core/Tensor.h>

#include <tuple>

namespace hal_ext {

at::Tensor classifier_discrepancy(const at::Tensor& predictions1, const at::Tensor& predictions2);

std::tuple<at::Tensor, at::Tensor> _classifier_discrepancy_backward(const at::Tensor& grad,
                                                                     const at::Tensor& predictions1,
                                                                     const at::Tensor& predictions2);

}  // namespace hal_ext
