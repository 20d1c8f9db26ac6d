#pragma once
#include <ATen/core/Tensor.h>

#include <optional>

namespace hal_ext {

// The result has dtype out_dtype (common/loss_dtype.h).
at::Tensor shift_log(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype = std::nullopt);

// The gradient of x, in x's dtype; grad has x's dtype or (for a float32 result of half x) its accumulation dtype.
at::Tensor _shift_log_backward(const at::Tensor& grad, const at::Tensor& x, double offset);

}  // namespace hal_ext

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include "common/checks.h"

namespace hal_ext {

inline void check_shift_log_offset(double offset) {
  TORCH_CHECK_VALUE(offset > 0, "offset must be > 0, got ", offset);
}

inline void check_shift_log_grad(const at::Tensor& grad, const at::Tensor& x) {
  check_float_tensor(grad, "grad");
  check_same_device(x, "x", grad, "grad");
  check_same_shape(x, "x", grad, "grad");
  TORCH_CHECK_TYPE(grad.scalar_type() == x.scalar_type() ||
                       grad.scalar_type() == at::toOpMathType(x.scalar_type()),
                   "grad must have the dtype of x (", x.scalar_type(), ") or its accumulation dtype (",
                   at::toOpMathType(x.scalar_type()), "), got ", grad.scalar_type());
}

}  // namespace hal_ext
