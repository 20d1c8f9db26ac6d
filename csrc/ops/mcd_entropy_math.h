#pragma once
// MCD entropy, shared by the CPU and CUDA kernels. For predictions p of shape (N, *) with M
// elements per row and column means m_k = (1/N) sum_i p[i, k]:
//   H(p)          = -(1/M) sum_k log(m_k + 1e-6)
//   dH/dp[i, k]   = -g / (M * N * (m_k + 1e-6))   (the same for every row i)
// The forward also returns the column means (in the accumulation dtype), which is all the backward
// needs: it writes the gradient without reading the predictions again.
#include "common/fast_math.h"
#include "common/macros.h"

namespace hal_ext {
namespace mcd_entropy_math {

template <typename acc_t>
HAL_HOST_DEVICE acc_t eps() {
  return acc_t(1e-6);
}

// log(m_k + 1e-6), summed over k by the forward.
template <typename acc_t>
HAL_HOST_DEVICE acc_t log_term(acc_t column_mean) {
  return hal_log(column_mean + eps<acc_t>());
}

// The loss from the sum of the log terms over the M columns (NaN for M = 0, as torch's mean).
template <typename acc_t>
HAL_HOST_DEVICE acc_t loss(acc_t log_sum, int64_t m) {
  return -(log_sum / static_cast<acc_t>(m));
}

// g_over_mn = g / (M * N); returns the gradient of every p[i, k] in column k.
template <typename acc_t>
HAL_HOST_DEVICE acc_t grad(acc_t g_over_mn, acc_t column_mean) {
  return -g_over_mn / (column_mean + eps<acc_t>());
}

}  // namespace mcd_entropy_math
}  // namespace hal_ext
