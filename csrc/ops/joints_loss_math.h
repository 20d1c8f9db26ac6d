#pragma once
// Keypoint heatmap losses (tllib's JointsMSELoss / JointsKLLoss), shared by the CPU and CUDA kernels.
// Every (b, k) heatmap is one row of n = H*W pixels; z = output, x = target, w = weight[b, k].
//
// MSE:  row(b, k) = w * sum_p 0.5 (z_p - x_p)^2          ('none' divides by n, 'mean' by B*K*n)
//       d/dz_p    = s * (z_p - x_p),  s = g_row * w / n  or  g * w / (B*K*n)
//
// KL:   x'_p = x_p + eps,  S = sum_p x'_p,  t_p = x'_p / S,  T = sum_p t_p = S / S,
//       lse = M + log sum_p exp(z_p - M)  (M = max_p z_p),  q_p = z_p - lse  (log_softmax),
//       row(b, k) = w * sum_p [xlogy(t_p, t_p) - t_p q_p]
//                 = w * (sum_p [xlogy(t_p, t_p) - t_p z_p] + T * lse)   (torch's kl_div terms)
//       d/dz_p    = s * (T exp(z_p - lse) - t_p),  s = g_row * w  ('none') or g * w / (B*K) ('mean'),
//                   evaluated as s T exp(z_p - lse) - (s / S) x'_p
//       The target receives no gradient from the fused op (the Python front end routes a target or
//       weight that requires grad to the reference composition). A row with n = 0 has loss 0.
#include "common/fast_math.h"
#include "common/macros.h"

namespace hal_ext {
namespace joints_loss_math {

template <typename acc_t>
HAL_HOST_DEVICE acc_t mse_term(acc_t z, acc_t x) {
  const acc_t d = z - x;
  return acc_t(0.5) * d * d;
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t mse_grad(acc_t z, acc_t x, acc_t scale) {
  return scale * (z - x);
}

// xlogy(t, t): 0 where t == 0 (NaN stays NaN, negative t gives NaN as log does).
template <typename acc_t>
HAL_HOST_DEVICE acc_t xlogx(acc_t t) {
  const acc_t safe = t == acc_t(0) ? acc_t(1) : t;
  return t == acc_t(0) ? acc_t(0) : t * hal_log(safe);
}

// The pixel part of the KL row loss; the row adds T * lse.
template <typename acc_t>
HAL_HOST_DEVICE acc_t kl_term(acc_t t, acc_t z) {
  return xlogx(t) - t * z;
}

// s (T exp(z - lse) - x' / S) with x' = x + eps, given scale_over_S = s / S once per row (no division per
// pixel).
template <typename acc_t>
HAL_HOST_DEVICE acc_t kl_grad(acc_t z, acc_t x_eps, acc_t lse, acc_t T, acc_t scale, acc_t scale_over_S) {
  return scale * T * hal_exp_nonpositive(z - lse) - scale_over_S * x_eps;  // z <= lse
}

// The same gradient from e = exp(z - M), stored by the forward's pass over the row (M = max_p z_p, or a
// shift below it in the CPU rows of JointsKLLoss; Z = sum_p e_p, lse = M + log Z): s T exp(z - lse) =
// (s T / Z) e, so with c = s T / Z once per row the gradient costs no exp of its own. Rounds differently
// from kl_grad (a few ulp), for finite rows only.
template <typename acc_t>
HAL_HOST_DEVICE acc_t kl_grad_from_exp(acc_t e, acc_t x_eps, acc_t c, acc_t scale_over_S) {
  return c * e - scale_over_S * x_eps;
}

// Row statistics the KL backward needs, saved by the forward (stats[r] = {lse, S}).
template <typename acc_t>
HAL_HOST_DEVICE acc_t kl_row_loss(acc_t pixel_sum, acc_t T, acc_t lse, int64_t n) {
  return n == 0 ? acc_t(0) : pixel_sum + T * lse;
}

// The same row loss from the row's sums. With s = -1 where S < 0 (else 1), u_p = s x'_p and
// P = sum_p xlogx(u_p), XZ = sum_p x'_p z_p: since t_p = u_p / |S| and
// t_p log t_p = (u_p log u_p) / |S| - t_p log |S|,
//   sum_p [xlogy(t_p, t_p) - t_p z_p] + T lse = (P - s XZ) / |S| - T log |S| + T lse.
// No division or log per pixel, and a pixel with x'_p = 0 adds exactly 0 to P (the CPU rows skip
// the log where a target is 0). inf/NaN propagate as in the pixel form: S = 0 gives NaN, and so does a
// t_p < 0 (an x'_p of the other sign than S: u_p < 0), as xlogy does; a row whose x'_p are all
// negative has t_p > 0 and a finite loss, as in the pixel form. Only overflow differs: u log u and
// x'z can pass float's range where t <= 1 does not, and the CPU rows then take the pixel form.
HAL_HOST_DEVICE double kl_target_sign(double S) { return S < 0.0 ? -1.0 : 1.0; }

HAL_HOST_DEVICE double kl_row_loss_from_sums(double P, double XZ, double S, double lse, int64_t n) {
  const double T = S / S, s = kl_target_sign(S), abs_S = s * S;
  return n == 0 ? 0.0 : (P - s * XZ) / abs_S - T * log(abs_S) + T * lse;
}

template <typename acc_t>
HAL_HOST_DEVICE acc_t max_nan_ignoring(acc_t a, acc_t b) {
  return b > a ? b : a;
}

}  // namespace joints_loss_math
}  // namespace hal_ext
