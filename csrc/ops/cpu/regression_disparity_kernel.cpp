// CPU kernels of hal_ext::regression_disparity (math in pseudo_label_math.h and joints_loss_math.h).
//
//   (x, y)_{b,k} = first argmax of y[b, k] (truncated generator: (0, 0) unless the max is > 0)
//   target[b, k] = 'min': G_k                      (G_j: keypoint j's Gaussian, tllib's truncated or Fast)
//                  'max': clamp(sum_{j != k} G_j, 0, 1)   (exact double sum, one rounding: clamp_false)
//   loss         = JointsMSELoss / JointsKLLoss(y_adv, target, weight) (joints_loss_math.h)
//
// No target map is built. Row (b, k)'s target is a per-sample *base* outside keypoint k's window and
// the window's own values inside it: base = 0 in mode 'min'; in mode 'max' base_p = clamp_false(T_p)
// with T = the exact double sum of the sample's K windows (built once per sample, cache-resident), and
// inside the window x_p = clamp_false(T_p - G_k(p)). A row reads y_adv (and the base) in its dense
// passes and visits its window's pixels one by one, so 'max' costs what 'min' costs:
//   MSE: sum_p 0.5 (z_p - base_p)^2 + sum_{p in window} [0.5 (z_p - x_p)^2 - 0.5 (z_p - base_p)^2]
//   KL:  with x'_p = x_p + eps, S = sum_p x'_p, t_p = x'_p / S, P = sum_p x'_p log x'_p:
//        sum_p [xlogy(t_p, t_p) - t_p z_p] = (P - sum_p x'_p z_p) / S - log S
//        S, P and sum x'_p z_p: the base's sums (S and P once per sample) corrected over the window (in
//        mode 'min' the corrections of S and P once per distinct window: MinWindowTerms).
// Row sums accumulate in double across blocks (joints_loss_rows.h). A row with a non-finite logit takes the
// dense form instead (its inf/NaN as torch's). The backward evaluates every pixel's target from the
// same base and window (bit for bit the dense gradient) and writes only grad_y_adv. For float/double on
// the autograd path the forward writes that gradient for a unit incoming gradient itself
// (_regression_disparity_with_grad), each row's while the row is in cache: MSE as the backward; KL from
// the exp(z_p - max) that the loss's pass stored (kl_grad_from_exp: no second exp, a few ulp from the
// backward's), rows with a non-finite logit as the backward.
// The peaks, with the KL criterion (y and y_adv of one dtype): each row's first pass reads a map of y
// together with its row of y_adv and finds that map's peak, so that y is not read in a pass of its own.
// In mode 'min' the map is the row's own (its target needs its own peak only); in mode 'max', where a
// sample's rows need all K of its peaks first, it is the same keypoint's map in the task's next sample
// (the task's first sample finds its K peaks on its own). Otherwise pass 1, one task per map, finds them.
// The Gaussian values of every window offset, once per call (GaussianTable). Pass 2, one task per sample.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <type_traits>
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

constexpr int64_t kWindowLanes = 16;  // float lanes of an AVX-512 vector

class GaussianTable;

// Keypoint j's window in one sample: its pixel box on a W-wide map; its Gaussian values are read from the
// call's GaussianTable.
struct Window {
  plm::Axis ax, ay;
  const GaussianTable* table;
  int64_t W;
  int64_t size() const { return ax.lo < ax.hi && ay.lo < ay.hi ? (ax.hi - ax.lo) * (ay.hi - ay.lo) : 0; }
  // f(first pixel index, its Gaussian values, count <= kWindowLanes) for chunks of the window's rows of
  // pixels, which are contiguous in the map and in the table. The callers' loops run over all
  // kWindowLanes lanes with the pixels past `count` masked out (`if (i < count)`): a window row (13
  // pixels at sigma 2) is shorter than a vector, and a plain loop would do it in the scalar remainder.
  template <typename F>
  HAL_ROW_INLINE void for_each_chunk(const F& f) const;
  // f(pixel index, Gaussian value) over the window's pixels, row by row.
  template <typename F>
  HAL_ROW_INLINE void for_each(const F& f) const {
    for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
      for (int64_t i = 0; i < count; ++i) f(p0 + i, v[i]);
    });
  }
};

// The Gaussian's values at the offsets from a window's centre that the call's windows cover: pixel (X, Y)
// of a window has the value gaussian_off(dx + (X - ax.lo), dy) with dx = offset32(ax.lo, centre_x) and
// dy = offset32(Y, centre_y). That depends on the offsets alone, so each value is evaluated once per call
// (a window at sigma 2 repeats the same 13 x 13 values in every row where it is not clipped), bit for
// bit what evaluating it in place gives.
class GaussianTable {
 public:
  template <bool kFast>
  static GaussianTable build(const std::vector<Window>& windows, float den) {
    GaussianTable t;
    bool any = false;
    int64_t dx1 = 0, dy1 = 0;  // largest offsets
    for (const Window& w : windows) {
      if (w.size() == 0) continue;
      const int64_t lx = plm::offset32(w.ax.lo, w.ax.centre), hx = lx + (w.ax.hi - w.ax.lo) - 1;
      const int64_t ly = plm::offset32(w.ay.lo, w.ay.centre), hy = plm::offset32(w.ay.hi - 1, w.ay.centre);
      t.dx0 = any ? std::min(t.dx0, lx) : lx;
      t.dy0 = any ? std::min(t.dy0, ly) : ly;
      dx1 = any ? std::max(dx1, hx) : hx;
      dy1 = any ? std::max(dy1, hy) : hy;
      any = true;
    }
    if (!any) return t;
    t.width = dx1 - t.dx0 + 1;
    t.values.resize(t.width * (dy1 - t.dy0 + 1));
    float* row = t.values.data();
    for (int64_t dy = t.dy0; dy <= dy1; ++dy, row += t.width) {
      const int32_t dx0 = static_cast<int32_t>(t.dx0);
      HAL_SIMD
      for (int64_t i = 0; i < t.width; ++i) {
        row[i] = plm::gaussian_off<kFast>(dx0 + static_cast<int32_t>(i), static_cast<int32_t>(dy), den);
      }
    }
    return t;
  }

  // The table for the windows of peaks anywhere on an H x W map: the offsets along x of a window depend
  // on the peak's x alone, and along y on its y, so the windows of the peaks (i, i) cover them all.
  template <bool kFast>
  static GaussianTable for_any_peak(const Args& a, float den);

  // The values from offset (dx, dy) on along dx.
  const float* at(int64_t dx, int64_t dy) const { return values.data() + (dy - dy0) * width + (dx - dx0); }

 private:
  int64_t dx0 = 0, dy0 = 0;  // smallest offsets
  int64_t width = 0;         // offsets per table row
  std::vector<float> values;
};

template <typename F>
HAL_ROW_INLINE void Window::for_each_chunk(const F& f) const {
  if (size() == 0) return;
  const int64_t len = ax.hi - ax.lo, dx = plm::offset32(ax.lo, ax.centre);
  for (int64_t Y = ay.lo; Y < ay.hi; ++Y) {
    const float* v = table->at(dx, plm::offset32(Y, ay.centre));
    for (int64_t c = 0; c < len; c += kWindowLanes) f(Y * W + ax.lo + c, v + c, std::min(kWindowLanes, len - c));
  }
}

template <bool kFast>
GaussianTable GaussianTable::for_any_peak(const Args& a, float den) {
  if (a.W == 0 || a.H == 0) return GaussianTable{};
  std::vector<Window> windows(std::max(a.W, a.H));
  for (int64_t i = 0; i < static_cast<int64_t>(windows.size()); ++i) {
    windows[i] = {axis_of(a, std::min(i, a.W - 1), a.W), axis_of(a, std::min(i, a.H - 1), a.H), nullptr, a.W};
  }
  return build<kFast>(windows, den);
}

// The window of every row (peaks {x, y} per row) and the Gaussian table they read: from the peaks found
// beforehand, or (peaks null) set row by row as the rows find their peaks (set: distinct rows from any
// thread), with the table of any peak's window.
class RowWindows {
 public:
  template <bool kFast>
  RowWindows(const Args& a, const int64_t* peaks, std::bool_constant<kFast>) : a_(a), windows_(a.rows()) {
    const float den = plm::gaussian_denominator(a.sigma);
    if (!peaks) {
      table_ = GaussianTable::for_any_peak<kFast>(a, den);
      return;
    }
    for (int64_t r = 0; r < a.rows(); ++r) set(r, peaks[2 * r], peaks[2 * r + 1]);
    table_ = GaussianTable::build<kFast>(windows_, den);
  }
  RowWindows(const RowWindows&) = delete;  // the windows point to table_
  RowWindows& operator=(const RowWindows&) = delete;

  void set(int64_t r, int64_t x, int64_t y) {
    windows_[r] = {axis_of(a_, x, a_.W), axis_of(a_, y, a_.H), &table_, a_.W};
  }
  const Window& operator[](int64_t r) const { return windows_[r]; }
  int64_t rows() const { return static_cast<int64_t>(windows_.size()); }

 private:
  const Args& a_;
  GaussianTable table_;
  std::vector<Window> windows_;
};

// Row (b, k)'s target: base (null: 0) off keypoint k's window; inside it G_k ('min', total null) or
// clamp_false(total - G_k) ('max').
struct SparseTarget {
  const float* base;
  const double* total;
  Window window;
};

// A row's target inside its window and its base, for the row's mode known at compile time (with_row_mode;
// kMax: 'max', base and total set), so that the loops over the window vectorise. The loops pass the
// pointers as local copies: read through the struct inside a masked loop, they would be masked loads of
// pointers, which do not vectorise.
template <bool kMax>
HAL_ROW_INLINE float window_value(const double* total, int64_t q, float g) {
  return kMax ? plm::clamp_false(total[q] - static_cast<double>(g)) : g;
}
template <bool kMax>
HAL_ROW_INLINE float base_value(const float* base, int64_t p) {
  return kMax ? base[p] : 0.0f;
}

// f(std::true_type) for a row of mode 'max' (t.total set), f(std::false_type) for 'min'.
template <typename F>
HAL_ROW_INLINE auto with_row_mode(const SparseTarget& t, const F& f) {
  return t.total ? f(std::true_type{}) : f(std::false_type{});
}

// f(q, x_q) for each pixel q of the row's window with its target x_q, in the masked 16-lane chunks of
// for_each_chunk: the vectorised loop of the gradient rows' window pixels.
template <typename F>
HAL_ROW_INLINE void for_each_window_pixel(const SparseTarget& t, const F& f) {
  with_row_mode(t, [&](auto max_tag) {
    constexpr bool kMax = decltype(max_tag)::value;
    const double* total = t.total;
    t.window.for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
      HAL_SIMD
      for (int64_t i = 0; i < kWindowLanes; ++i) {
        if (i < count) f(p0 + i, window_value<kMax>(total, p0 + i, v[i]));
      }
    });
  });
}

// Calls f(p0, p1) for the contiguous pixel ranges of a map of n pixels outside window w (some empty).
template <typename F>
HAL_ROW_INLINE void for_each_range_off_window(const Window& w, int64_t n, const F& f) {
  if (w.size() == 0) return f(int64_t(0), n);
  int64_t from = 0;
  for (int64_t Y = w.ay.lo; Y < w.ay.hi; ++Y) {
    f(from, Y * w.W + w.ax.lo);
    from = Y * w.W + w.ax.hi;
  }
  f(from, n);
}

// sum over the pixels outside window w of term(p), blocked (joints_loss_rows.h).
template <typename acc_t, typename F>
HAL_ROW_INLINE double off_window_sum(const Window& w, int64_t n, const F& term) {
  double total = 0;
  for_each_range_off_window(w, n, [&](int64_t p0, int64_t p1) { total += range_sum<acc_t>(p0, p1, term); });
  return total;
}

// The KL target sums of a sample's base, x'_p = base_p + eps (acc_t, as the dense form): sum_p x'_p and
// sum_p x'_p log x'_p, each term's value summed in double, and each pixel's x'_p log x'_p (xlx, mode
// 'max'), so that a row exchanges its window's terms exactly: with epsilon 0 and no target left, S is
// exactly 0 and the loss NaN, as torch's.
struct BaseSums {
  double S, P;
  const double* xlx;  // null in mode 'min' (base 0: every term is xlogx(eps))
};

template <typename acc_t>
HAL_ROW_INLINE BaseSums base_sums(const float* base, int64_t n, acc_t eps, double* xlx) {
  if (!base) {
    return {static_cast<double>(n) * static_cast<double>(eps), static_cast<double>(n) * math::xlogx<acc_t>(eps),
            nullptr};
  }
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) xlx[p] = static_cast<double>(math::xlogx<acc_t>(static_cast<acc_t>(base[p]) + eps));
  double S = 0, P = 0;
  HAL_PRAGMA(omp simd reduction(+ : S, P))
  for (int64_t p = 0; p < n; ++p) {
    S += static_cast<double>(static_cast<acc_t>(base[p]) + eps);
    P += xlx[p];
  }
  return {S, P, xlx};
}

// The dense target row (the fallback of rows with non-finite logits).
void build_target(float* out, const SparseTarget& t, int64_t n) {
  with_row_mode(t, [&](auto max_tag) {
    constexpr bool kMax = decltype(max_tag)::value;
    for (int64_t p = 0; p < n; ++p) out[p] = base_value<kMax>(t.base, p);
    t.window.for_each([&](int64_t q, float g) { out[q] = window_value<kMax>(t.total, q, g); });
  });
}

// A window's sums in double, per lane of its 16-pixel chunks (lane i: pixel i of every chunk), added up
// lane by lane once per window: one horizontal sum per window rather than one per chunk.
using WindowLanes = double[kWindowLanes];

HAL_ROW_INLINE double lanes_total(const WindowLanes& lanes) {
  double total = 0;
  for (int64_t i = 0; i < kWindowLanes; ++i) total += lanes[i];
  return total;
}

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
// kl_sparse_forward reads them.
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

// A KL row's first pass over its row z of y_adv: m = max_p z_p (NaN ignored) and sum_p weight(p) z_p
// (blocked; weight: base_p + eps, or 1 against base 0, where 1 * z_p is z_p exactly).
template <typename acc_t>
struct FirstPass {
  acc_t m;
  double z_sum;
};

// The first pass; kPeak: a map of y (y_adv's dtype) is read alongside, and its first argmax returned in
// *peak: y's maximum (NaN if any) in the pass, then its first index (first_index_of_max, from L1), which
// is map_argmax's result. The map is the row's own (mode 'min') or the next sample's (mode 'max'), so
// that y is not read in a pass of its own (see the top of the file).
template <bool kPeak, typename acc_t, typename in_t, typename Weight>
HAL_ROW_INLINE FirstPass<acc_t> first_pass(const in_t* z, int64_t n, const Weight& weight, const in_t* y = nullptr,
                                           pseudo_label_math::ArgMax<acc_t>* peak = nullptr) {
  acc_t m = -std::numeric_limits<acc_t>::infinity(), ym = -std::numeric_limits<acc_t>::infinity();
  int32_t y_nan = 0;
  double total = 0;
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    acc_t s = 0;
    if constexpr (kPeak) {
      HAL_PRAGMA(omp simd reduction(max : m, ym) reduction(+ : s) reduction(| : y_nan))
      for (int64_t p = p0; p < p1; ++p) {
        const acc_t v = static_cast<acc_t>(z[p]);
        m = math::max_nan_ignoring<acc_t>(m, v);
        s += weight(p) * v;
        const acc_t u = static_cast<acc_t>(y[p]);
        ym = u > ym ? u : ym;
        y_nan |= static_cast<int32_t>(u != u);
      }
    } else {
      HAL_PRAGMA(omp simd reduction(max : m) reduction(+ : s))
      for (int64_t p = p0; p < p1; ++p) {
        const acc_t v = static_cast<acc_t>(z[p]);
        m = math::max_nan_ignoring<acc_t>(m, v);
        s += weight(p) * v;
      }
    }
    total += static_cast<double>(s);
  });
  if constexpr (kPeak) {
    const bool nan = y_nan != 0;
    const acc_t y_max = nan ? static_cast<acc_t>(NAN) : ym;
    *peak = {y_max, first_index_of_max(y, n, y_max, nan)};
  }
  return {m, total};
}

// What a KL row prefetches while it computes: its next row of y_adv, and of y when the row reads its map
// of y in its first pass (null: none).
template <typename in_t>
struct NextMaps {
  const in_t* z = nullptr;
  const in_t* y = nullptr;

  HAL_ROW_INLINE void prefetch(int64_t p0, int64_t p1) const {
    prefetch_pixels(z, p0, p1);
    prefetch_pixels(y, p0, p1);
  }
};

// A KL row's first pass against its sample's base (null: 0): sum_p x'_p z_p against the base is
// sum_p (base_p + eps) z_p, or eps * sum_p z_p. With a map y, its first argmax in *peak (first_pass).
template <typename acc_t, typename in_t>
HAL_ROW_INLINE FirstPass<acc_t> kl_first_pass(const in_t* z, int64_t n, const float* base, acc_t eps,
                                              const in_t* y,
                                              pseudo_label_math::ArgMax<acc_t>* peak) {
  const auto base_weight = [base, eps](int64_t p) { return static_cast<acc_t>(base[p]) + eps; };
  const auto unit_weight = [](int64_t) { return acc_t(1); };
  if (y) {
    return base ? first_pass<true, acc_t>(z, n, base_weight, y, peak)
                : first_pass<true, acc_t>(z, n, unit_weight, y, peak);
  }
  return base ? first_pass<false, acc_t>(z, n, base_weight) : first_pass<false, acc_t>(z, n, unit_weight);
}

// The KL row statistics of a row (see the top of the file) from its first pass (m and sum x'_p z_p
// against the base): Z in a second pass (kStoreExp: storing exp(z_p - m) in e, for
// kl_sparse_grad_from_exp; prefetching `next`);
// then the window's terms exchanged for its own in sum x'_p z_p, and in S and P (the sample's base
// sums). None for a row with a non-finite logit, which makes sum x'_p z_p non-finite (as does a sum
// that overflows), for a row whose target sums to S < 0 (a negative epsilon: P is the base's, summed for
// S > 0, see kl_row_loss_from_sums), and for a row whose loss from its sums is not finite (kl_pixel_sum):
// such a row takes the dense form.
template <bool kStoreExp, typename acc_t, typename in_t>
HAL_ROW_INLINE std::optional<KLRowStats<acc_t>> kl_sparse_forward(const in_t* z, int64_t n, const SparseTarget& t,
                                                                  const FirstPass<acc_t>& first,
                                                                  const BaseSums& sums,
                                                                  const WindowTerms* min_terms, acc_t eps,
                                                                  in_t* e, const NextMaps<in_t>& next) {
  const acc_t m = first.m;
  const double z_sum = first.z_sum;
  if (!std::isfinite(z_sum)) return std::nullopt;
  double xz = t.base ? z_sum : static_cast<double>(eps) * z_sum;
  double Z = 0;  // blocked as row_sum; the next maps are prefetched meanwhile
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    next.prefetch(p0, p1);
    acc_t zs = 0;
    HAL_SIMD_SUM(zs)
    for (int64_t p = p0; p < p1; ++p) {
      const acc_t ep = hal_exp_nonpositive(static_cast<acc_t>(z[p]) - m);
      if constexpr (kStoreExp) e[p] = static_cast<in_t>(ep);
      zs += ep;
    }
    Z += static_cast<double>(zs);
  });
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

// The gradient row of a finite row from the exp(z_p - M) that kl_sparse_forward<true> left in out
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

// Sample b of a task's samples [b0, b1).
struct TaskSample {
  int64_t b, b0, b1;
  bool first() const { return b == b0; }
  bool has_next() const { return b + 1 < b1; }
};

// One task per range of samples, sample by sample: start(s) (the forward's per-sample state, its peaks when
// the task's rows find them); in mode 'max' the base built from its K windows; then info = on_sample(base,
// scratch, s) (scratch: n doubles for the KL criterion in mode 'max', the caller's per sample), and
// on_row(row, target, info) for its K rows (target: the row's window as `windows` holds it when the sample
// starts; rows that find their own peak build their own).
template <typename Start, typename OnSample, typename OnRow>
void for_each_sample(const Args& a, const RowWindows& windows, const Start& start, const OnSample& on_sample,
                     const OnRow& on_row) {
  const int64_t n = a.n();
  at::parallel_for(0, a.B, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> total(a.max_mode ? n : 0), scratch(a.max_mode && a.kl ? n : 0);
    std::vector<float> base(a.max_mode ? n : 0);
    for (int64_t b = b0; b < b1; ++b) {
      const TaskSample s{b, b0, b1};
      start(s);
      if (a.max_mode) {
        std::fill(total.begin(), total.end(), 0.0);
        for (int64_t k = 0; k < a.K; ++k) {
          windows[b * a.K + k].for_each_chunk([&](int64_t p0, const float* v, int64_t count) {
            HAL_SIMD
            for (int64_t i = 0; i < kWindowLanes; ++i) {
              if (i < count) total[p0 + i] += static_cast<double>(v[i]);
            }
          });
        }
        HAL_SIMD
        for (int64_t p = 0; p < n; ++p) base[p] = plm::clamp_false(total[p]);
      }
      const float* base_ptr = a.max_mode ? base.data() : nullptr;
      const auto info = on_sample(base_ptr, scratch.data(), s);
      for (int64_t k = 0; k < a.K; ++k) {
        const int64_t r = b * a.K + k;
        on_row(r, SparseTarget{base_ptr, a.max_mode ? total.data() : nullptr, windows[r]}, info);
      }
    }
  });
}

// What the backward divides the incoming gradient by: the MSE's pixel count, and the row count for 'mean'.
template <typename acc_t>
acc_t grad_divisor(const Args& a) {
  const acc_t row_div = a.kl ? acc_t(1) : static_cast<acc_t>(a.n());
  return a.mean ? static_cast<acc_t>(a.rows()) * row_div : row_div;
}

// The peaks {x, y} of rows [r0, r1) of y (a scalar_t map per row): each map's first argmax, placed by the
// generator's rule.
template <typename scalar_t>
void find_peaks(const Args& a, const void* y, int64_t r0, int64_t r1, int64_t* peaks) {
  const scalar_t* yp = static_cast<const scalar_t*>(y);
  const int64_t n = a.n();
  for (int64_t r = r0; r < r1; ++r) {
    int64_t px = 0, py = 0;  // empty maps (H or W = 0) have no pixel to read
    if (n > 0) {
      const auto best = map_argmax(yp + r * n, n);
      plm::peak_position(best.index, best.value, a.W, /*max_rule=*/!a.fast, &px, &py);
    }
    peaks[2 * r] = px;
    peaks[2 * r + 1] = py;
  }
}

using FindPeaks = void (*)(const Args&, const void*, int64_t, int64_t, int64_t*);

// Where the forward's peaks come from (see the top of the file): pass 1; each KL row's first pass, for its
// own map ('min'); or for the same keypoint's map in its task's next sample ('max').
enum class PeakSource { kPass, kOwnRow, kNextSample };

// The forward: (loss, peaks, stats). With `unit_grad` (float/double y_adv only), each row's gradient for
// a unit incoming gradient is also written right after the row's forward, while the row is in cache: bit
// for bit what the backward writes for grad = 1 (1 * w is w).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(const at::Tensor& y, const at::Tensor& y_adv,
                                                       const std::optional<at::Tensor>& weight, int64_t mode,
                                                       double sigma, int64_t generator, int64_t criterion,
                                                       int64_t reduction, double epsilon, at::Tensor* unit_grad) {
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
  if (unit_grad) *unit_grad = at::empty_like(z);
  FindPeaks find_peaks_of = nullptr;  // y's dtype may differ from y_adv's
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, yc.scalar_type(), "regression_disparity_peaks",
                                  [&] { find_peaks_of = &find_peaks<scalar_t>; });
  const void* yv = yc.const_data_ptr();
  // The KL rows find the peaks in their first passes (y of y_adv's dtype), or pass 1 finds them all.
  const PeakSource source = !a.kl || yc.scalar_type() != z.scalar_type() ? PeakSource::kPass
                            : a.max_mode                                  ? PeakSource::kNextSample
                                                                          : PeakSource::kOwnRow;
  if (source == PeakSource::kPass && n > 0) {
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) { find_peaks_of(a, yv, r0, r1, pk); });
  }
  // Only the KL rows have statistics (and none without pixels): keep the output defined.
  if (n == 0 || !a.kl) stats.zero_();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* yp = source == PeakSource::kPass ? nullptr : static_cast<const scalar_t*>(yv);
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    scalar_t* gp = unit_grad ? unit_grad->mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t eps = static_cast<acc_t>(epsilon), divisor = grad_divisor<acc_t>(a);
    std::vector<acc_t> row(rows);
    auto run = [&](auto fast_tag) {
      RowWindows windows(a, source == PeakSource::kPass ? pk : nullptr, fast_tag);
      const auto set_peak = [&](int64_t r, int64_t index, acc_t value) {
        plm::peak_position(index, value, a.W, /*max_rule=*/!a.fast, &pk[2 * r], &pk[2 * r + 1]);
        windows.set(r, pk[2 * r], pk[2 * r + 1]);
      };
      // The window terms of each task (mode 'min', KL), by the task's first sample.
      std::vector<std::optional<MinWindowTerms<acc_t>>> min_terms(a.kl && !a.max_mode ? a.B : 0);
      const auto start_sample = [&](TaskSample s) {
        if (!min_terms.empty() && s.first()) min_terms[s.b].emplace(eps);
        if (source == PeakSource::kNextSample && s.first()) {  // no earlier sample of the task found these
          find_peaks_of(a, yv, s.b * a.K, (s.b + 1) * a.K, pk);
          for (int64_t r = s.b * a.K; r < (s.b + 1) * a.K; ++r) windows.set(r, pk[2 * r], pk[2 * r + 1]);
        }
      };
      struct SampleInfo {
        BaseSums sums;
        bool has_next;  // whether the task's next sample follows this one
        MinWindowTerms<acc_t>* min_terms;  // the task's (null: none)
      };
      auto on_sample = [&](const float* base, double* scratch, TaskSample s) {
        return SampleInfo{a.kl ? base_sums<acc_t>(base, n, eps, scratch) : BaseSums{0, 0, nullptr}, s.has_next(),
                          min_terms.empty() ? nullptr : &*min_terms[s.b0]};
      };
      for_each_sample(a, windows, start_sample, on_sample, [&](int64_t r, const SparseTarget& sample_target,
                                                               const SampleInfo& info) {
        const scalar_t* zr = zp + r * n;
        scalar_t* gr = gp ? gp + r * n : nullptr;  // this row's unit gradient, when asked for
        const acc_t scale = row_grad_scale(acc_t(1), wp, r, divisor);
        std::vector<float> dense;  // the dense target, for rows with a non-finite logit
        const auto dense_target = [&](const SparseTarget& t) {
          dense.resize(n);
          build_target(dense.data(), t, n);
          return dense.data();
        };
        acc_t v;
        if (a.kl) {
          // The map of y whose peak the row's first pass finds: its own, the same keypoint's in the task's
          // next sample, or none (-1).
          const int64_t peak_row = source == PeakSource::kOwnRow                     ? r
                                   : source == PeakSource::kNextSample && info.has_next ? r + a.K
                                                                                        : -1;
          const scalar_t* yr = peak_row >= 0 ? yp + peak_row * n : nullptr;
          plm::ArgMax<acc_t> best{};
          const FirstPass<acc_t> first = kl_first_pass<acc_t>(zr, n, sample_target.base, eps, yr, &best);
          if (yr) set_peak(peak_row, best.index, best.value);
          const SparseTarget t =
              source == PeakSource::kOwnRow ? SparseTarget{nullptr, nullptr, windows[r]} : sample_target;
          const NextMaps<scalar_t> next{r + 1 < rows ? zr + n : nullptr, yr && peak_row + 1 < rows ? yr + n : nullptr};
          const WindowTerms* terms = info.min_terms ? &info.min_terms->of(t.window) : nullptr;
          std::optional<KLRowStats<acc_t>> k =
              gr ? kl_sparse_forward<true, acc_t>(zr, n, t, first, info.sums, terms, eps, gr, next)
                 : kl_sparse_forward<false, acc_t>(zr, n, t, first, info.sums, terms, eps, gr, next);
          if (k) {
            if (gr) kl_sparse_grad_from_exp<acc_t>(n, t, eps, *k, scale, gr);
          } else {
            k = kl_row_forward<acc_t>(zr, dense_target(t), n, eps);
            if (gr) kl_sparse_grad<acc_t>(zr, n, t, eps, k->lse, k->S, scale, gr);
          }
          v = k->loss;
          st[2 * r] = k->lse;
          st[2 * r + 1] = k->S;
        } else {
          const SparseTarget& t = sample_target;
          const double s =
              gr ? mse_sparse_sum<true, acc_t>(zr, n, t, scale, gr) : mse_sparse_sum<false, acc_t>(zr, n, t);
          v = std::isfinite(s) ? static_cast<acc_t>(s) : mse_row_sum<acc_t>(zr, dense_target(t), n);
        }
        row[r] = wp ? v * wp[r] : v;
      });
    };
    if (n == 0) {
      find_peaks_of(a, yv, 0, rows, pk);
      for (int64_t r = 0; r < rows; ++r) row[r] = a.kl ? acc_t(0) : (wp ? acc_t(0) * wp[r] : acc_t(0));
    } else if (a.fast) {
      run(std::true_type{});
    } else {
      run(std::false_type{});
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> regression_disparity_forward_cpu(
    const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, nullptr);
}

at::Tensor regression_disparity_cpu(const at::Tensor& y, const at::Tensor& y_adv,
                                    const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                                    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return std::get<0>(forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, nullptr));
}

std::tuple<at::Tensor, at::Tensor> regression_disparity_with_grad_cpu(const at::Tensor& y, const at::Tensor& y_adv,
                                                                      const std::optional<at::Tensor>& weight,
                                                                      int64_t mode, double sigma, int64_t generator,
                                                                      int64_t criterion, int64_t reduction,
                                                                      double epsilon) {
  if (!regression_disparity_detail::fused_grad_supported(y_adv)) {  // half types (or input the checks reject)
    return regression_disparity_detail::with_grad_composite(y, y_adv, weight, mode, sigma, generator, criterion,
                                                            reduction, epsilon);
  }
  at::Tensor grad;
  at::Tensor loss = std::get<0>(forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon, &grad));
  return {loss, grad};
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
  const int64_t n = a.n();
  if (result.numel() == 0) return result;
  const int64_t* pp = pk.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "regression_disparity_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* sp = st.const_data_ptr<acc_t>();
    scalar_t* o = result.mutable_data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(epsilon), divisor = grad_divisor<acc_t>(a);
    auto run = [&](auto fast_tag) {
      const RowWindows windows(a, pp, fast_tag);
      const auto no_sample_info = [](const float*, double*, TaskSample) { return 0; };
      for_each_sample(a, windows, [](TaskSample) {}, no_sample_info, [&](int64_t r, const SparseTarget& t, int) {
        const acc_t scale = row_grad_scale(a.mean ? gp[0] : gp[r], wp, r, divisor);
        if (a.kl) {
          kl_sparse_grad<acc_t>(zp + r * n, n, t, eps, sp[2 * r], sp[2 * r + 1], scale, o + r * n);
        } else {
          mse_sparse_grad<acc_t>(zp + r * n, n, t, scale, o + r * n);
        }
      });
    };
    if (a.fast) run(std::true_type{});
    else run(std::false_type{});
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("regression_disparity", &regression_disparity_cpu);
  m.impl("_regression_disparity_forward", &regression_disparity_forward_cpu);
  m.impl("_regression_disparity_backward", &regression_disparity_backward_cpu);
  m.impl("_regression_disparity_with_grad", &regression_disparity_with_grad_cpu);
}

}  // namespace hal_ext
