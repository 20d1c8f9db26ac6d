// CPU kernels of hal_ext::regression_disparity (math in pseudo_label_math.h and joints_loss_math.h).
//
//   (x, y)_{b,k} = first argmax of y[b, k] (truncated generator: (0, 0) unless the max is > 0)
//   target[b, k] = 'min': G_k                      (G_j: keypoint j's Gaussian, tllib's truncated or Fast)
//                  'max': clamp(sum_{j != k} G_j, 0, 1)   (exact double sum, one rounding: clamp_false)
//   loss         = JointsMSELoss / JointsKLLoss(y_adv, target, weight) (joints_loss_math.h)
//
// Pass 1, one task per map: the peaks. Pass 2, one task per sample b: the K windows are summed into a
// per-thread H*W scratch (mode 'max'), then each row's target is built in a second H*W scratch and
// the row kernels of the keypoint losses run on it; for mode 'min' with the KL criterion no target
// row is built: the target terms run over the keypoint's window (see window_only). The B*K*H*W maps
// are never written; the backward rebuilds the targets from the saved peaks and writes only grad_y_adv.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common/cpu_parallel.h"
#include "ops/cpu/joints_loss_rows.h"
#include "ops/cpu/map_argmax.h"
#include "ops/joints_loss_common.h"
#include "ops/pseudo_label_math.h"
#include "ops/regression_disparity.h"
#include "ops/regression_disparity_args.h"

namespace hal_ext {
namespace {

namespace plm = pseudo_label_math;
using namespace joints_loss_cpu;
using regression_disparity_args::Args;
using regression_disparity_args::check_args;

plm::Axis axis_of(const Args& a, int64_t pos, int64_t extent) {
  return a.fast ? plm::fast_axis(pos, a.sigma, extent) : plm::truncated_axis(pos, a.sigma, extent);
}

template <bool kFast>
void add_window(double* total, const plm::Axis& ax, const plm::Axis& ay, int64_t W, float den) {
  if (ax.lo >= ax.hi) return;
  const int32_t n = static_cast<int32_t>(ax.hi - ax.lo), dx0 = plm::offset32(ax.lo, ax.centre);
  for (int64_t Y = ay.lo; Y < ay.hi; ++Y) {
    double* t = total + Y * W + ax.lo;
    const int32_t dy = plm::offset32(Y, ay.centre);
    HAL_SIMD
    for (int32_t i = 0; i < n; ++i) t[i] += static_cast<double>(plm::gaussian_off<kFast>(dx0 + i, dy, den));
  }
}

// The target row of keypoint k of one sample. `total` holds the sample's exact sum (mode 'max').
template <bool kFast>
void build_target(float* out, const double* total, bool max_mode, const plm::Axis& ax, const plm::Axis& ay,
                  int64_t H, int64_t W, float den) {
  const int64_t n = H * W;
  if (max_mode) {
    HAL_SIMD
    for (int64_t p = 0; p < n; ++p) out[p] = plm::clamp_false(total[p]);
  } else {
    std::fill(out, out + n, 0.0f);
  }
  if (ax.lo >= ax.hi) return;
  const int32_t len = static_cast<int32_t>(ax.hi - ax.lo), dx0 = plm::offset32(ax.lo, ax.centre);
  for (int64_t Y = ay.lo; Y < ay.hi; ++Y) {
    float* o = out + Y * W + ax.lo;
    const double* t = total + Y * W + ax.lo;
    const int32_t dy = plm::offset32(Y, ay.centre);
    if (max_mode) {
      HAL_SIMD
      for (int32_t i = 0; i < len; ++i) {
        o[i] = plm::clamp_false(t[i] - static_cast<double>(plm::gaussian_off<kFast>(dx0 + i, dy, den)));
      }
    } else {
      HAL_SIMD
      for (int32_t i = 0; i < len; ++i) o[i] = plm::gaussian_off<kFast>(dx0 + i, dy, den);
    }
  }
}

// Mode 'min' with the KL criterion: row (b, k)'s target is keypoint k's window, zero elsewhere (plus
// epsilon everywhere), so off the window it is one constant c0 = epsilon / S and its target terms
// reduce to (n - |window|) xlogx(c0) - c0 * (sum of z off the window): only the window's pixels are
// visited one by one and the dense target row is neither built nor read.
bool window_only(const Args& a) { return a.kl && !a.max_mode; }

// Calls f(pixel_index, gaussian_value) over keypoint window (ax, ay) of a W-wide map, row by row.
template <bool kFast, typename F>
void for_each_window_pixel(const plm::Axis& ax, const plm::Axis& ay, int64_t W, float den, const F& f) {
  if (ax.lo >= ax.hi) return;
  const int32_t len = static_cast<int32_t>(ax.hi - ax.lo), dx0 = plm::offset32(ax.lo, ax.centre);
  for (int64_t Y = ay.lo; Y < ay.hi; ++Y) {
    const int32_t dy = plm::offset32(Y, ay.centre);
    for (int32_t i = 0; i < len; ++i) f(Y * W + ax.lo + i, plm::gaussian_off<kFast>(dx0 + i, dy, den));
  }
}

// kl_row_forward for a window target. Returns false, computing nothing, when the row holds a
// non-finite logit: the dense form's NaN/inf propagation (as torch's kl_div) is then kept.
template <bool kFast, typename acc_t, typename in_t>
bool kl_window_forward(const in_t* z, int64_t n, const plm::Axis& ax, const plm::Axis& ay, int64_t W, float den,
                       acc_t eps, KLRowStats<acc_t>* out) {
  acc_t m = -std::numeric_limits<acc_t>::infinity(), z_sum = 0;
  int32_t non_finite = 0;
  HAL_PRAGMA(omp simd reduction(max : m) reduction(+ : z_sum, non_finite))
  for (int64_t p = 0; p < n; ++p) {
    const acc_t v = static_cast<acc_t>(z[p]);
    m = math::max_nan_ignoring<acc_t>(m, v);
    z_sum += v;
    non_finite += !(v - v == acc_t(0));
  }
  if (non_finite) return false;
  acc_t Z = 0;
  HAL_SIMD_SUM(Z)
  for (int64_t p = 0; p < n; ++p) Z += hal_exp_nonpositive(static_cast<acc_t>(z[p]) - m);
  acc_t S_window = 0, z_window = 0;
  int64_t count = 0;
  for_each_window_pixel<kFast>(ax, ay, W, den, [&](int64_t q, float g) {
    S_window += static_cast<acc_t>(g) + eps;
    z_window += static_cast<acc_t>(z[q]);
    ++count;
  });
  const acc_t off = static_cast<acc_t>(n - count);
  const acc_t S = S_window + off * eps, c0 = eps / S;
  acc_t A = off * math::xlogx(c0) - c0 * (z_sum - z_window);
  for_each_window_pixel<kFast>(ax, ay, W, den, [&](int64_t q, float g) {
    A += math::kl_term<acc_t>((static_cast<acc_t>(g) + eps) / S, static_cast<acc_t>(z[q]));
  });
  const acc_t lse = m + hal_log(Z);
  *out = {math::kl_row_loss<acc_t>(A, S / S, lse, n), lse, S};
  return true;
}

// kl_row_grad for a window target: the same expressions at every pixel (t = (0 + epsilon) / S off the
// window), so the result equals the dense one bit for bit.
template <bool kFast, typename acc_t, typename in_t>
void kl_window_grad(const in_t* z, int64_t n, const plm::Axis& ax, const plm::Axis& ay, int64_t W, float den,
                    acc_t eps, acc_t lse, acc_t S, acc_t scale, in_t* out) {
  const acc_t T = S / S, t0 = (acc_t(0) + eps) / S;
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    out[p] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[p]), t0, lse, T, scale));
  }
  for_each_window_pixel<kFast>(ax, ay, W, den, [&](int64_t q, float g) {
    const acc_t t = (static_cast<acc_t>(g) + eps) / S;
    out[q] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[q]), t, lse, T, scale));
  });
}

// Runs body(row, target, ax, ay) for every row, one task per sample, with the row's keypoint window;
// with build_targets, target is the row's dense target built from the peaks (else null).
template <typename Body>
void for_each_target_row(const Args& a, const int64_t* peaks, bool build_targets, const Body& body) {
  const float den = plm::gaussian_denominator(a.sigma);
  const int64_t n = a.n();
  at::parallel_for(0, a.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> total(build_targets && a.max_mode ? n : 0);
    std::vector<float> target(build_targets ? n : 0);
    std::vector<plm::Axis> ax(a.K), ay(a.K);
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t k = 0; k < a.K; ++k) {
        ax[k] = axis_of(a, peaks[2 * (b * a.K + k)], a.W);
        ay[k] = axis_of(a, peaks[2 * (b * a.K + k) + 1], a.H);
      }
      if (build_targets && a.max_mode) {
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t k = 0; k < a.K; ++k) {
          if (a.fast) add_window<true>(total.data(), ax[k], ay[k], a.W, den);
          else add_window<false>(total.data(), ax[k], ay[k], a.W, den);
        }
      }
      for (int64_t k = 0; k < a.K; ++k) {
        if (build_targets) {
          if (a.fast) build_target<true>(target.data(), total.data(), a.max_mode, ax[k], ay[k], a.H, a.W, den);
          else build_target<false>(target.data(), total.data(), a.max_mode, ax[k], ay[k], a.H, a.W, den);
        }
        body(b * a.K + k, build_targets ? target.data() : nullptr, ax[k], ay[k]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> regression_disparity_forward_cpu(
    const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_heatmap(y, "y");
  check_same_device(y_adv, "y_adv", y, "y");
  check_same_shape(y_adv, "y_adv", y, "y");
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const at::Tensor yc = y.contiguous(), z = y_adv.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const int64_t rows = a.rows(), n = a.n();
  at::Tensor peaks = at::empty({a.B, a.K, 2}, y.options().dtype(at::kLong));
  at::Tensor stats = at::empty({a.B, a.K, 2}, y.options().dtype(acc));
  at::Tensor out = a.mean ? at::empty({}, y_adv.options().dtype(acc)) : at::empty({a.B, a.K}, y_adv.options().dtype(acc));
  int64_t* pk = peaks.mutable_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "regression_disparity_peaks", [&] {
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        int64_t px = 0, py = 0;  // empty maps (H or W = 0) have no pixel to read
        if (n > 0) {
          const auto best = map_argmax(yp + r * n, n);
          plm::peak_position(best.index, best.value, a.W, /*max_rule=*/!a.fast, &px, &py);
        }
        pk[2 * r] = px;
        pk[2 * r + 1] = py;
      }
    });
  });
  // Only the KL rows have statistics (and none without pixels): keep the output defined.
  if (n == 0 || !a.kl) stats.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(epsilon);
    std::vector<acc_t> row(rows);
    const bool windows = window_only(a);
    const float den = plm::gaussian_denominator(a.sigma);
    auto dense_kl = [&](int64_t r, const float* target, const plm::Axis& ax, const plm::Axis& ay) {
      if (target) return kl_row_forward<acc_t>(zp + r * n, target, n, eps);
      std::vector<float> built(n);  // a non-finite row on the window path: the dense target, built here
      if (a.fast) build_target<true>(built.data(), nullptr, /*max_mode=*/false, ax, ay, a.H, a.W, den);
      else build_target<false>(built.data(), nullptr, /*max_mode=*/false, ax, ay, a.H, a.W, den);
      return kl_row_forward<acc_t>(zp + r * n, built.data(), n, eps);
    };
    auto body = [&](int64_t r, const float* target, const plm::Axis& ax, const plm::Axis& ay) {
      acc_t v;
      if (a.kl) {
        KLRowStats<acc_t> k;
        const bool done = !target && (a.fast ? kl_window_forward<true>(zp + r * n, n, ax, ay, a.W, den, eps, &k)
                                             : kl_window_forward<false>(zp + r * n, n, ax, ay, a.W, den, eps, &k));
        if (!done) k = dense_kl(r, target, ax, ay);
        v = k.loss;
        st[2 * r] = k.lse;
        st[2 * r + 1] = k.S;
      } else {
        v = mse_row_sum<acc_t>(zp + r * n, target, n);
      }
      row[r] = wp ? v * wp[r] : v;
    };
    if (n > 0) {
      for_each_target_row(a, pk, !windows, body);
    } else {
      for (int64_t r = 0; r < rows; ++r) row[r] = a.kl ? acc_t(0) : (wp ? acc_t(0) * wp[r] : acc_t(0));
    }
    acc_t* o = out.mutable_data_ptr<acc_t>();
    const acc_t none_div = a.kl ? acc_t(1) : static_cast<acc_t>(n);
    if (!a.mean) {
      for (int64_t r = 0; r < rows; ++r) o[r] = row[r] / none_div;
    } else {
      acc_t total = 0;
      for (const acc_t v : row) total += v;
      *o = total / (static_cast<acc_t>(rows) * none_div);
    }
  });
  return {out, peaks, stats};
}

at::Tensor regression_disparity_cpu(const at::Tensor& y, const at::Tensor& y_adv,
                                    const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                                    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return std::get<0>(
      regression_disparity_forward_cpu(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon));
}

at::Tensor regression_disparity_backward_cpu(const at::Tensor& grad, const at::Tensor& y_adv,
                                             const std::optional<at::Tensor>& weight, const at::Tensor& peaks,
                                             const at::Tensor& stats, int64_t mode, double sigma, int64_t generator,
                                             int64_t criterion, int64_t reduction, double epsilon) {
  const Args a = check_args(y_adv, weight, mode, sigma, generator, criterion, reduction);
  joints_loss::check_grad(grad, y_adv, reduction, a.B, a.K);
  regression_disparity_args::check_saved(y_adv, peaks, stats, a);
  const auto acc = joints_loss::acc_dtype(y_adv.scalar_type());
  const at::Tensor z = y_adv.contiguous(), pk = peaks.contiguous(), st = stats.contiguous();
  const at::Tensor w = joints_loss::weight_rows(weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  const int64_t rows = a.rows(), n = a.n();
  if (result.numel() == 0) return result;
  const int64_t* pp = pk.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* sp = st.const_data_ptr<acc_t>();
    scalar_t* o = result.mutable_data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(epsilon);
    const acc_t row_div = a.kl ? acc_t(1) : static_cast<acc_t>(n);
    const acc_t divisor = a.mean ? static_cast<acc_t>(rows) * row_div : row_div;
    const float den = plm::gaussian_denominator(a.sigma);
    const bool windows = window_only(a);
    for_each_target_row(a, pp, !windows, [&](int64_t r, const float* target, const plm::Axis& ax, const plm::Axis& ay) {
      acc_t scale = a.mean ? gp[0] : gp[r];
      if (wp) scale *= wp[r];
      scale /= divisor;
      const acc_t lse = sp[2 * r], S = sp[2 * r + 1];
      if (!target && a.fast) kl_window_grad<true>(zp + r * n, n, ax, ay, a.W, den, eps, lse, S, scale, o + r * n);
      else if (!target) kl_window_grad<false>(zp + r * n, n, ax, ay, a.W, den, eps, lse, S, scale, o + r * n);
      else if (a.kl) kl_row_grad<acc_t>(zp + r * n, target, n, eps, lse, S, scale, o + r * n);
      else mse_row_grad<acc_t>(zp + r * n, target, n, scale, o + r * n);
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("regression_disparity", &regression_disparity_cpu);
  m.impl("_regression_disparity_forward", &regression_disparity_forward_cpu);
  m.impl("_regression_disparity_backward", &regression_disparity_backward_cpu);
}

}  // namespace hal_ext
