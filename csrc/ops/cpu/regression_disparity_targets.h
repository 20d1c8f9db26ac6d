#pragma once
// The targets of the fused regression disparity's CPU rows (math at the top of
// regression_disparity_kernel.cpp): each keypoint's window and its Gaussian values (GaussianTable,
// RowWindows), a row's target as its sample's base plus its own window (SparseTarget), the loops over a
// window's pixels and the ranges off it, and the KL sums of a sample's base.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/macros.h"
#include "ops/cpu/joints_loss_rows.h"
#include "ops/pseudo_label_math.h"
#include "ops/regression_disparity_args.h"

namespace hal_ext {
namespace regression_disparity_rows {

namespace plm = pseudo_label_math;
using namespace joints_loss_cpu;
using regression_disparity_args::Args;

inline plm::Axis axis_of(const Args& a, int64_t pos, int64_t extent) {
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
    set_rows(peaks, 0, a.rows());
    table_ = GaussianTable::build<kFast>(windows_, den);
  }
  RowWindows(const RowWindows&) = delete;  // the windows point to table_
  RowWindows& operator=(const RowWindows&) = delete;

  void set(int64_t r, int64_t x, int64_t y) {
    windows_[r] = {axis_of(a_, x, a_.W), axis_of(a_, y, a_.H), &table_, a_.W};
  }
  // Rows [r0, r1) from their peaks (peaks: {x, y} of every row).
  void set_rows(const int64_t* peaks, int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) set(r, peaks[2 * r], peaks[2 * r + 1]);
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
inline void build_target(float* out, const SparseTarget& t, int64_t n) {
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

}  // namespace regression_disparity_rows
}  // namespace hal_ext
