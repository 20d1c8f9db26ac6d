#pragma once
#include <ATen/core/Tensor.h>

namespace hal_ext {

at::Tensor shift_log(const at::Tensor& x, double offset);

at::Tensor _shift_log_backward(const at::Tensor& grad, const at::Tensor& x, double offset);

}  // namespace hal_ext

#include <c10/util/Exception.h>

namespace hal_ext {

inline void check_shift_log_offset(double offset) {
  TORCH_CHECK_VALUE(offset > 0, "offset must be > 0, got ", offset);
}

}  // namespace hal_ext
