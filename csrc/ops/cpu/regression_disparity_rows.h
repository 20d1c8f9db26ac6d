#pragma once
// One (b, k) row of the fused regression disparity on the CPU (math at the top of
// regression_disparity_kernel.cpp): the MSE row in one pass; the KL row's first pass, its exp pass (with
// the peak of a map of y), its statistics from the base's sums and its window's terms, and its gradient
// rows.
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <utility>

#include "ops/cpu/map_argmax.h"
#include "ops/cpu/regression_disparity_targets.h"

namespace hal_ext {
namespace regression_disparity_rows {

// The unweighted MSE row sum (not yet divided by n) of a finite row: off the window against the base,
// then the window's pixels. kGrad: in the same pass, the gradient row for `scale` in out (what
// mse_sparse_grad writes), so that the forward with its gradient reads z and the base once.
template <bool kGrad, typename acc_t, typename in_t>
HAL_ROW_INLINE double mse_sparse_sum(const in_t* z, int64_t n, const SparseTarget& t, acc_t scale = acc_t(1),
                                     in_t* out = nullptr) {
  const auto term = [&](int64_t p, acc_t x) {
    const acc_t zp = static_cast<acc_t>(z[p]);
    if constexpr (kGrad) out[p] = static_cast<in_t>(math::mse_grad<acc_t>(zp, x, scale));
    return math::mse_term<acc_t>(zp, x);
  };
  double s = t.base
                 ? off_window_sum<acc_t>(t.window, n, [&](int64_t p) { return term(p, static_cast<acc_t>(t.base[p])); })
                 : off_window_sum<acc_t>(t.window, n, [&](int64_t p) { return term(p, acc_t(0)); });
  with_row_mode(t, [&](auto max_tag) {
    constexpr bool kMax = decltype(max_tag)::value;
    const double* total = t.total;
    WindowLanes w = {};
    t.window.for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
      HAL_SIMD
      for (int64_t i = 0; i < kWindowLanes; ++i) {
        if (i < count) {
          const int64_t q = p0 + i;
          w[i] += static_cast<double>(term(q, static_cast<acc_t>(window_value<kMax>(total, q, v[i]))));
        }
      }
    });
    s += lanes_total(w);
  });
  return s;
}

// Mode 'min', KL criterion: a window's terms of S and P against base 0, dS = sum_q (x'_q - eps) and
// dP = sum_q (xlogx(x'_q) - xlogx(eps)) with x'_q = G(q) + eps. They depend on the window's values alone,
// which are the same in every row whose window has the same offsets from its centre and the same extent
// (every unclipped window): MinWindowTerms evaluates them once per distinct window of a task, and
// kl_sparse_stats reads them.
struct WindowTerms {
  double dS, dP;
};

template <typename acc_t>
HAL_ROW_INLINE WindowTerms min_window_terms(const Window& w, acc_t eps) {
  const double xlx_eps = static_cast<double>(math::xlogx<acc_t>(eps));
  WindowLanes dS = {}, dP = {};
  w.for_each_chunk([&](int64_t, const float* v, int64_t count) {
    HAL_SIMD
    for (int64_t i = 0; i < kWindowLanes; ++i) {
      if (i < count) {
        const acc_t x = static_cast<acc_t>(v[i]) + eps;
        dS[i] += static_cast<double>(x) - static_cast<double>(acc_t(0) + eps);
        dP[i] += static_cast<double>(math::xlogx<acc_t>(x)) - xlx_eps;
      }
    }
  });
  return {lanes_total(dS), lanes_total(dP)};
}

// The terms of each distinct window, evaluated when a row first asks for them; one per parallel task, so
// that no two threads share one.
template <typename acc_t>
class MinWindowTerms {
 public:
  explicit MinWindowTerms(acc_t eps) : eps_(eps) {}

  const WindowTerms& of(const Window& w) {
    const auto [it, added] = by_window_.try_emplace(
        std::array<int64_t, 4>{w.ax.lo - w.ax.centre, w.ax.hi - w.ax.lo, w.ay.lo - w.ay.centre, w.ay.hi - w.ay.lo});
    if (added) it->second = min_window_terms<acc_t>(w, eps_);
    return it->second;
  }

 private:
  acc_t eps_;
  std::map<std::array<int64_t, 4>, WindowTerms> by_window_;
};

// A KL row's first pass over its row z of y_adv: m = max_p z_p (NaN ignored) and sum_p x'_p z_p against
// its sample's base (null: 0), which is sum_p (base_p + eps) z_p, or eps * sum_p z_p (blocked; against
// base 0 the weight is 1, and 1 * z_p is z_p exactly).
template <typename acc_t>
struct FirstPass {
  acc_t m;
  double z_sum;
};

template <typename acc_t, typename in_t, typename Weight>
HAL_ROW_INLINE FirstPass<acc_t> first_pass(const in_t* z, int64_t n, const Weight& weight) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  double total = 0;
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    acc_t s = 0;
    HAL_PRAGMA(omp simd reduction(max : m) reduction(+ : s))
    for (int64_t p = p0; p < p1; ++p) {
      const acc_t v = static_cast<acc_t>(z[p]);
      m = math::max_nan_ignoring<acc_t>(m, v);
      s += weight(p) * v;
    }
    total += static_cast<double>(s);
  });
  return {m, total};
}

template <typename acc_t, typename in_t>
HAL_ROW_INLINE FirstPass<acc_t> kl_first_pass(const in_t* z, int64_t n, const float* base, acc_t eps) {
  if (base) return first_pass<acc_t>(z, n, [base, eps](int64_t p) { return static_cast<acc_t>(base[p]) + eps; });
  return first_pass<acc_t>(z, n, [](int64_t) { return acc_t(1); });
}

// What a KL row prefetches while it computes: its next row of y_adv, and the map of y that row reads
// (null: none).
template <typename in_t>
struct NextMaps {
  const in_t* z = nullptr;
  const in_t* y = nullptr;

  HAL_ROW_INLINE void prefetch(int64_t p0, int64_t p1) const {
    prefetch_pixels(z, p0, p1);
    prefetch_pixels(y, p0, p1);
  }
};

// A finite KL row's exp pass: Z = sum_p exp(z_p - m) (blocked as row_sum; kStoreExp: each exp stored in e,
// for kl_sparse_grad_from_exp), prefetching `next`. With a map y (y_adv's dtype), its first argmax in
// *peak, map_argmax's result: y's maximum and whether it holds a NaN in the pass, then the first index
// from L1 (argmax_from_max). The map is the row's own (mode 'min') or the same keypoint's in the task's next
// sample (mode 'max'): y is read in this pass, which waits on memory anyway, rather than in the first
// pass or a pass of its own (see the top of regression_disparity_kernel.cpp).
template <bool kStoreExp, typename acc_t, typename in_t>
HAL_ROW_INLINE double kl_exp_pass(const in_t* z, int64_t n, acc_t m, in_t* e, const NextMaps<in_t>& next,
                                  const in_t* y, pseudo_label_math::ArgMax<acc_t>* peak) {
  double Z = 0;
  acc_t ym = -std::numeric_limits<acc_t>::infinity();
  int32_t y_nan = 0;
  const auto exp_term = [&](int64_t p) {
    const acc_t ep = hal_exp_nonpositive(static_cast<acc_t>(z[p]) - m);
    if constexpr (kStoreExp) e[p] = static_cast<in_t>(ep);
    return ep;
  };
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    next.prefetch(p0, p1);
    acc_t zs = 0;
    if (y) {
      HAL_PRAGMA(omp simd reduction(+ : zs) reduction(max : ym) reduction(| : y_nan))
      for (int64_t p = p0; p < p1; ++p) {
        zs += exp_term(p);
        const acc_t u = static_cast<acc_t>(y[p]);
        ym = u > ym ? u : ym;
        y_nan |= static_cast<int32_t>(u != u);
      }
    } else {
      HAL_SIMD_SUM(zs)
      for (int64_t p = p0; p < p1; ++p) zs += exp_term(p);
    }
    Z += static_cast<double>(zs);
  });
  if (y) *peak = argmax_from_max(y, n, ym, y_nan != 0);
  return Z;
}

// The KL row statistics of a finite row (math at the top of regression_disparity_kernel.cpp) from its first
// pass (m and sum x'_p z_p against the base) and its exp pass (Z): the window's terms exchanged for its own
// in sum x'_p z_p, and in S and P (the sample's base sums). None for a row whose target sums to S < 0 (a
// negative epsilon: P is the base's, summed for S > 0, see kl_row_loss_from_sums), and for a row whose loss
// from its sums is not finite (kl_pixel_sum): such a row takes the dense form, as does a row with a
// non-finite logit (which makes sum x'_p z_p non-finite, as does a sum that overflows: the caller skips the
// exp pass).
template <typename acc_t, typename in_t>
HAL_ROW_INLINE std::optional<KLRowStats<acc_t>> kl_sparse_stats(const in_t* z, int64_t n, const SparseTarget& t,
                                                                const FirstPass<acc_t>& first, double Z,
                                                                const BaseSums& sums,
                                                                const WindowTerms* min_terms, acc_t eps) {
  const acc_t m = first.m;
  double xz = t.base ? first.z_sum : static_cast<double>(eps) * first.z_sum;
  // The window's terms exchanged for its own: dS and dP (mode 'min': min_terms), and dxz.
  double dS = 0, dP = 0;
  WindowLanes dxz = {};
  with_row_mode(t, [&](auto max_tag) {
    constexpr bool kMax = decltype(max_tag)::value;
    if constexpr (kMax) {
      const float* base = t.base;
      const double *total = t.total, *xlx = sums.xlx;
      WindowLanes dS_lanes = {}, dP_lanes = {};
      t.window.for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
        HAL_SIMD
        for (int64_t i = 0; i < kWindowLanes; ++i) {
          if (i < count) {
            const int64_t q = p0 + i;
            const acc_t x = static_cast<acc_t>(window_value<true>(total, q, v[i])) + eps;
            const acc_t b = static_cast<acc_t>(base[q]) + eps;
            const acc_t zq = static_cast<acc_t>(z[q]);
            dS_lanes[i] += static_cast<double>(x) - static_cast<double>(b);
            dP_lanes[i] += static_cast<double>(math::xlogx<acc_t>(x)) - xlx[q];
            dxz[i] += static_cast<double>(x * zq) - static_cast<double>(b * zq);
          }
        }
      });
      dS = lanes_total(dS_lanes);
      dP = lanes_total(dP_lanes);
    } else {
      t.window.for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
        HAL_SIMD
        for (int64_t i = 0; i < kWindowLanes; ++i) {
          if (i < count) {
            const acc_t x = static_cast<acc_t>(v[i]) + eps, zq = static_cast<acc_t>(z[p0 + i]);
            dxz[i] += static_cast<double>(x * zq) - static_cast<double>(eps) * zq;
          }
        }
      });
      dS = min_terms->dS;
      dP = min_terms->dP;
    }
  });
  const double S = sums.S + dS, P = sums.P + dP;
  xz += lanes_total(dxz);
  const double lse = static_cast<double>(m) + std::log(Z);
  const double loss = math::kl_row_loss_from_sums(P, xz, S, lse, n);
  if (S < 0 || !std::isfinite(loss)) return std::nullopt;
  return KLRowStats<acc_t>{static_cast<acc_t>(loss), static_cast<acc_t>(lse), static_cast<acc_t>(S),
                           static_cast<double>(m), Z};
}

// The gradient rows: the dense expressions at every pixel with the target evaluated in place.
template <typename acc_t, typename in_t>
HAL_ROW_INLINE void kl_sparse_grad(const in_t* z, int64_t n, const SparseTarget& t, acc_t eps, acc_t lse, acc_t S,
                                   acc_t scale, in_t* out) {
  const acc_t T = S / S, scale_over_S = scale / S;
  if (t.base) {
    kl_row_grad<acc_t>(z, t.base, n, eps, lse, S, scale, out);
  } else {
    const acc_t x0 = acc_t(0) + eps;
    HAL_SIMD
    for (int64_t p = 0; p < n; ++p) {
      out[p] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[p]), x0, lse, T, scale, scale_over_S));
    }
  }
  for_each_window_pixel(t, [&](int64_t q, float x) {
    out[q] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[q]), static_cast<acc_t>(x) + eps, lse, T,
                                                    scale, scale_over_S));
  });
}

// The gradient row of a finite row from the exp(z_p - M) that kl_exp_pass<true> left in out
// (kl_grad_from_exp): the window's pixels first, against the row's own target, then the ranges off the
// window against the base.
template <typename acc_t, typename in_t>
HAL_ROW_INLINE void kl_sparse_grad_from_exp(int64_t n, const SparseTarget& t, acc_t eps, const KLRowStats<acc_t>& k,
                                            acc_t scale, in_t* out) {
  const acc_t T = k.S / k.S, scale_over_S = scale / k.S;
  const acc_t c = static_cast<acc_t>(static_cast<double>(scale) * static_cast<double>(T) / k.Z);
  for_each_window_pixel(t, [&](int64_t q, float x) {
    out[q] = static_cast<in_t>(
        math::kl_grad_from_exp<acc_t>(static_cast<acc_t>(out[q]), static_cast<acc_t>(x) + eps, c, scale_over_S));
  });
  with_row_mode(t, [&](auto max_tag) {
    constexpr bool kMax = decltype(max_tag)::value;
    const float* base = t.base;
    for_each_range_off_window(t.window, n, [&](int64_t p0, int64_t p1) {
      HAL_SIMD
      for (int64_t p = p0; p < p1; ++p) {
        const acc_t x = static_cast<acc_t>(base_value<kMax>(base, p)) + eps;
        out[p] = static_cast<in_t>(math::kl_grad_from_exp<acc_t>(static_cast<acc_t>(out[p]), x, c, scale_over_S));
      }
    });
  });
}

template <typename acc_t, typename in_t>
HAL_ROW_INLINE void mse_sparse_grad(const in_t* z, int64_t n, const SparseTarget& t, acc_t scale, in_t* out) {
  if (t.base) {
    mse_row_grad<acc_t>(z, t.base, n, scale, out);
  } else {
    HAL_SIMD
    for (int64_t p = 0; p < n; ++p) {
      out[p] = static_cast<in_t>(math::mse_grad<acc_t>(static_cast<acc_t>(z[p]), acc_t(0), scale));
    }
  }
  for_each_window_pixel(t, [&](int64_t q, float x) {
    out[q] = static_cast<in_t>(math::mse_grad<acc_t>(static_cast<acc_t>(z[q]), static_cast<acc_t>(x), scale));
  });
}

}  // namespace regression_disparity_rows
}  // namespace hal_ext
