#pragma once
// MDD (margin disparity discrepancy) math, shared by the CPU and CUDA kernels of
// hal_ext::classification_mdd and hal_ext::regression_mdd.
//
// Classification, per sample row r (logits z over the classes, class stride D = prod(d)):
//   h      = first argmax of y over the classes (NaN counts as the maximum)
//   m      = max_j z_j,  e_j = exp(z_j - m),  O = sum_{j != h} e_j,  S = O + e_h
//   q      = O / S                                  (= 1 - p_h without cancellation)
//   L_s    = log(S) + (m - z_h)                     (cross entropy of z against h)
//   L_t    = log(min(q + 1e-6, 1))                  (shift_log(1 - p_h))
//   loss_r = (-margin * L_s) * w_s + L_t * w_t
// Backward, with G the incoming gradient of loss_r and coef the per-row factor:
//   dloss/dz_j = G * coef * p_j   (j != h),   dloss/dz_h = -G * coef * q
//   coef_s = -margin * w_s,  coef_t = w_t * p_h / (q + 1e-6) where q + 1e-6 < 1, else 0 (shift_log's boundary rule).
//
// Regression, per element: L(d) = |d| (l1) or d^2 (mse) with d = y_adv - y;
//   loss = (-margin * L(d_s)) * w_s + L(d_t) * w_t,  dL/dd = sign(d) (sign(NaN) = 0) or 2 d.
#include "common/fast_math.h"
#include "common/macros.h"

namespace hal_ext {
namespace mdd_math {

// Layout of the per-row statistics the classification forward saves for the backward:
// stats has shape (kStats, M), argmax has shape (2, M) (source row 0, target row 1).
constexpr int kStatMaxS = 0, kStatInvS = 1, kStatCoefS = 2, kStatQS = 3;
constexpr int kStatMaxT = 4, kStatInvT = 5, kStatCoefT = 6, kStatQT = 7;
constexpr int kStats = 8;

template <typename acc_t>
HAL_HOST_DEVICE acc_t offset() {
  return static_cast<acc_t>(1e-6);
}

// Argmax scan step: does value v (seen after `best`) replace it? NaN wins over numbers, the first
// NaN stays, equal values keep the earlier index (torch.max semantics).
template <typename acc_t>
HAL_HOST_DEVICE bool argmax_takes(acc_t best, acc_t v) {
  return !(best != best) && !(v <= best);
}

// Merging two partial argmaxes (v1, i1) and (v2, i2): is the second one the winner?
template <typename acc_t, typename index_t>
HAL_HOST_DEVICE bool argmax_second_wins(acc_t v1, index_t i1, acc_t v2, index_t i2) {
  const bool nan1 = v1 != v1, nan2 = v2 != v2;
  if (nan1 || nan2) return nan2 && (!nan1 || i2 < i1);
  return v2 > v1 || (v2 == v1 && i2 < i1);
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t max_of(acc_t a, acc_t b) {
  return b > a ? b : a;  // NaN is skipped here; exp(NaN - m) propagates it later
}

// Source term from the row sums. Returns L_s; writes 1/S and q.
template <typename acc_t>
HAL_HOST_DEVICE acc_t source_term(acc_t m, acc_t others, acc_t e_h, acc_t z_h, acc_t& inv_sum, acc_t& q) {
  const acc_t s = others + e_h;
  inv_sum = acc_t(1) / s;
  q = others * inv_sum;
  return hal_log(s) + (m - z_h);
}

// Target term from the row sums. Returns L_t; writes 1/S, q and the unweighted backward factor.
template <typename acc_t>
HAL_HOST_DEVICE acc_t target_term(acc_t others, acc_t e_h, acc_t& inv_sum, acc_t& q, acc_t& coef) {
  const acc_t s = others + e_h;
  inv_sum = acc_t(1) / s;
  q = others * inv_sum;
  const acc_t qo = q + offset<acc_t>();
  coef = qo < acc_t(1) ? (e_h * inv_sum) / qo : acc_t(0);
  return hal_log(qo > acc_t(1) ? acc_t(1) : qo);  // NaN stays NaN, as torch.clamp
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t combine(acc_t margin, acc_t l_s, acc_t w_s, acc_t l_t, acc_t w_t) {
  return (-margin * l_s) * w_s + l_t * w_t;
}

// Gradient of one logit: a = G * coef * (1/S) precomputed, e = exp(z_j - m).
template <typename acc_t>
HAL_HOST_DEVICE acc_t logit_grad(bool is_h, acc_t a, acc_t e, acc_t g_coef_q) {
  return is_h ? -g_coef_q : a * e;
}

// Regression: loss_kind 0 = l1, 1 = mse.
template <typename acc_t>
HAL_HOST_DEVICE acc_t regression_term(acc_t d, int kind) {
  return kind == 0 ? (d < acc_t(0) ? -d : d) : d * d;
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t regression_grad(acc_t d, int kind) {
  return kind == 0 ? (d > acc_t(0) ? acc_t(1) : (d < acc_t(0) ? acc_t(-1) : acc_t(0))) : acc_t(2) * d;
}

}  // namespace mdd_math
}  // namespace hal_ext
