#pragma once
// MDD shift_log, shared by the CPU and CUDA kernels (elementwise):
//   y     = log(min(x + offset, 1))
//   dy/dx = g / (x + offset)  where x + offset < 1, else 0: 0 at the bound x + offset == 1 (PyTorch's
//           minimum-norm subgradient, as torch.clamp's backward since torch 2.14) and for NaN x
// NaN propagates through min (as torch.clamp), +Inf gives log(1) = 0, -Inf gives NaN.
#include "common/fast_math.h"
#include "common/macros.h"

namespace hal_ext {
namespace shift_log_math {

template <typename acc_t>
HAL_HOST_DEVICE acc_t value(acc_t x, acc_t offset) {
  const acc_t v = x + offset;
  return hal_log(v > acc_t(1) ? acc_t(1) : v);
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t grad(acc_t g, acc_t x, acc_t offset) {
  const acc_t v = x + offset;
  return v < acc_t(1) ? g / v : acc_t(0);
}

}  // namespace shift_log_math
}  // namespace hal_ext
