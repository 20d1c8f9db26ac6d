#pragma once
// MCD classifier discrepancy, shared by the CPU and CUDA kernels.
//   d(p1, p2) = mean(|p1 - p2|) over all n elements
//   dd/dp1    = g * sign(p1 - p2) / n,  dd/dp2 = -dd/dp1,  sign(0) = sign(NaN) = 0 (torch's abs backward)
#include "common/macros.h"

namespace hal_ext {
namespace classifier_discrepancy_math {

template <typename acc_t>
HAL_HOST_DEVICE acc_t term(acc_t a, acc_t b) {
  const acc_t d = a - b;
  return d < acc_t(0) ? -d : d;  // NaN stays NaN
}

// g_over_n = g / n; returns the gradient for p1.
template <typename acc_t>
HAL_HOST_DEVICE acc_t grad(acc_t a, acc_t b, acc_t g_over_n) {
  const acc_t d = a - b;
  return d > acc_t(0) ? g_over_n : (d < acc_t(0) ? -g_over_n : acc_t(0));
}

}  // namespace classifier_discrepancy_math
}  // namespace hal_ext
