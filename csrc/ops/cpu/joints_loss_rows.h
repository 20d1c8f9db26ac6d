#pragma once
// One (b, k) heatmap row of the keypoint losses on the CPU (math in ops/joints_loss_math.h). The
// loops are written to vectorise (omp simd; hal_exp/hal_log for float). The target row may have any
// element type (the input dtype, or a float row that the fused regression disparity builds).
#include <cstdint>
#include <limits>

#include "common/macros.h"
#include "ops/joints_loss_math.h"

// GCC does not inline hal_exp/hal_log on its own (too large), and an outlined call blocks the
// vectorisation of the loop around it: `flatten` inlines every call inside the row functions.
#if defined(__GNUC__)
#define HAL_ROW_INLINE __attribute__((flatten)) inline
#else
#define HAL_ROW_INLINE inline
#endif

namespace hal_ext {
namespace joints_loss_cpu {

namespace math = joints_loss_math;

// sum_p 0.5 (z_p - x_p)^2
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE acc_t mse_row_sum(const in_t* z, const tgt_t* x, int64_t n) {
  acc_t s = 0;
  HAL_SIMD_SUM(s)
  for (int64_t p = 0; p < n; ++p) s += math::mse_term<acc_t>(static_cast<acc_t>(z[p]), static_cast<acc_t>(x[p]));
  return s;
}

template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE void mse_row_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t scale, in_t* out) {
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    out[p] = static_cast<in_t>(math::mse_grad<acc_t>(static_cast<acc_t>(z[p]), static_cast<acc_t>(x[p]), scale));
  }
}

template <typename acc_t>
struct KLRowStats {
  acc_t loss;  // unweighted row loss
  acc_t lse;   // logsumexp of the output row
  acc_t S;     // sum of (target + epsilon)
};

// Two passes: (max z, S), then (sum exp(z - max), sum xlogy(t, t) - t z).
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLRowStats<acc_t> kl_row_forward(const in_t* z, const tgt_t* x, int64_t n, acc_t eps) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  acc_t S = 0;
  HAL_PRAGMA(omp simd reduction(max : m) reduction(+ : S))
  for (int64_t p = 0; p < n; ++p) {
    m = math::max_nan_ignoring<acc_t>(m, static_cast<acc_t>(z[p]));
    S += static_cast<acc_t>(x[p]) + eps;
  }
  acc_t Z = 0, A = 0;
  HAL_PRAGMA(omp simd reduction(+ : Z, A))
  for (int64_t p = 0; p < n; ++p) {
    const acc_t zp = static_cast<acc_t>(z[p]);
    Z += hal_exp_nonpositive(zp - m);
    A += math::kl_term<acc_t>((static_cast<acc_t>(x[p]) + eps) / S, zp);
  }
  const acc_t lse = m + hal_log(Z);
  return {math::kl_row_loss<acc_t>(A, S / S, lse, n), lse, S};
}

template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE void kl_row_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, acc_t lse, acc_t S, acc_t scale,
                        in_t* out) {
  const acc_t T = S / S;
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    const acc_t t = (static_cast<acc_t>(x[p]) + eps) / S;
    out[p] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[p]), t, lse, T, scale));
  }
}

// Rows per parallel task: about 32K pixels, at least one row.
inline int64_t row_grain(int64_t n) { return n >= 32768 ? 1 : 32768 / (n > 0 ? n : 1); }

}  // namespace joints_loss_cpu
}  // namespace hal_ext
