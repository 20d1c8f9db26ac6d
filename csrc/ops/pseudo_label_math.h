#pragma once
// RegDA pseudo-label math, shared by the CPU and CUDA kernels of hal_ext::pseudo_label_2d and
// hal_ext::fast_pseudo_label_2d (and by the fused regression-disparity kernels), so that every path
// finds the same peaks and evaluates the same Gaussians.
//
// Contracts (SPEC "RegDA"; all integers are int64_t, positions are (x = column, y = row)):
//
// (a) First argmax of a flat map, NaN counting as the maximum, lowest flat index winning ties
//     (torch.argmax / numpy.argmax semantics).
//     - argmax_better(v, i, best_v, best_i): true when candidate (v, i) must replace (best_v, best_i).
//       It is a total order, so it serves as the combine step of any reduction tree (CUDA warp
//       shuffles, per-lane accumulators merged in any order) and of a sequential scan.
//     - argmax_init<acc_t>(): the identity (value -inf, index INT64_MAX): any real element beats it.
//     - peak_position(index, value, W, max_rule, &x, &y): x = index % W, y = index / W; when
//       max_rule (tllib's PseudoLabelGenerator2d) and not value > 0 (NaN included): x = y = 0.
//
// (b) tllib's truncated Gaussian (PseudoLabelGenerator2d), per axis, for peak coordinate `pos` on an
//     axis of `extent` pixels, with t = 3 * sigma, all in double exactly as Python evaluates it:
//       ul = trunc(pos - t), br = trunc((pos + t) + 1), size = 2 t + 1, c = floor(size / 2)
//     truncated_axis(pos, sigma, extent) -> Axis{lo = max(0, ul), hi = min(br, extent),
//       centre = ul + c}, every product and sum rounded separately (no FMA: mul_rn, add_rn).
//       Pixels lo <= P < hi lie in the window; the window is empty when lo >= hi.
//     truncated_value(X, Y, ax, ay, inv) = exp(-(dx^2 + dy^2) / den) in float32 with
//       dx = float(X - ax.centre), dy = float(Y - ay.centre), den = float(2 sigma^2)
//       ((X - ul) - c computed as X - (ul + c): identical while |values| < 2^24, i.e. always for
//       sane sigma), valid inside the window only: the caller writes exactly 0 outside it.
//
// (c) tllib's FastPseudoLabelGenerator2d value at pixel (X, Y) for peak (x, y), no max rule:
//       d = (X - x)^2 + (Y - y)^2 (int64), v = exp(-(float(d) / den)), den = float(2 sigma^2),
//       fast_value = v > 0.01f ? v : 0 (F.threshold(v, 1e-2, 0)).
//     fast_axis(pos, sigma, extent) gives a conservative pixel box [lo, hi) outside which
//     fast_value is certainly 0 (|P - pos| > 3.07 sigma implies v < exp(-4.71) < 0.01), so kernels
//     need evaluate only inside it; centre = pos.
//
// (d) ground_false[b, k] = clamp(sum_{j != k} ground_truth[b, j], 0, 1). The kernels sum the
//     float32 values exactly in double (they are multiples of 2^-41 below 2, so the sum of fewer
//     than 2^11 terms is exact), subtract their own term, and round once: clamp_false(s) below.
//     (tllib's float32 sums can differ from this correctly rounded value by one float32 rounding
//     of the sum.)
#include <cmath>
#include <cstdint>

#include "common/fast_math.h"
#include "common/macros.h"

namespace hal_ext {
namespace pseudo_label_math {

// ---- (a) first argmax ---------------------------------------------------------------------------

template <typename acc_t>
HAL_HOST_DEVICE bool argmax_better(acc_t v, int64_t i, acc_t best_v, int64_t best_i) {
  const bool v_nan = v != v, b_nan = best_v != best_v;
  if (v_nan || b_nan) return v_nan && (!b_nan || i < best_i);
  return v > best_v || (v == best_v && i < best_i);
}

template <typename acc_t>
struct ArgMax {
  acc_t value;
  int64_t index;
};

template <typename acc_t>
HAL_HOST_DEVICE ArgMax<acc_t> argmax_init() {
  return {-static_cast<acc_t>(INFINITY), INT64_MAX};
}

template <typename acc_t>
HAL_HOST_DEVICE ArgMax<acc_t> argmax_combine(ArgMax<acc_t> a, ArgMax<acc_t> b) {
  return argmax_better(b.value, b.index, a.value, a.index) ? b : a;
}

// Peak coordinates of map element `index` (value `value`) in a map of width W.
template <typename acc_t>
HAL_HOST_DEVICE void peak_position(int64_t index, acc_t value, int64_t W, bool max_rule, int64_t* x, int64_t* y) {
  if (max_rule && !(value > acc_t(0))) {
    *x = 0;
    *y = 0;
    return;
  }
  *x = index % W;
  *y = index / W;
}

// ---- (b), (c) window per axis -------------------------------------------------------------------

struct Axis {
  int64_t lo;      // first pixel of the window (clipped to the map)
  int64_t hi;      // one past the last pixel (clipped); empty when lo >= hi
  int64_t centre;  // the pixel whose offset is 0 in the Gaussian
};

// Python int(v) of a double, clamped far outside any map so the cast cannot overflow.
HAL_HOST_DEVICE int64_t trunc_to_int64(double v) {
  const double lim = 4.0e18;
  v = v > lim ? lim : (v < -lim ? -lim : v);
  return static_cast<int64_t>(v);  // C++ conversion truncates toward zero, like Python int()
}

HAL_HOST_DEVICE int64_t clip64(int64_t v, int64_t lo, int64_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

// a * b and a + b, each rounded once as Python does: never contracted into a fused multiply-add
// (nvcc contracts by default, --fmad=true; a volatile store stops host compilers from contracting).
// With sigma = 4/3, p - sigma * 3 fused would move tllib's window by one pixel.
HAL_HOST_DEVICE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  volatile double product = a * b;
  return product;
#endif
}

HAL_HOST_DEVICE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

HAL_HOST_DEVICE Axis truncated_axis(int64_t pos, double sigma, int64_t extent) {
  const double t = mul_rn(sigma, 3.0);          // tmp_size = sigma * 3
  const double p = static_cast<double>(pos);
  const int64_t ul = trunc_to_int64(add_rn(p, -t));  // int(mu - tmp_size)
  const int64_t br = trunc_to_int64(add_rn(add_rn(p, t), 1.0));  // int(mu + tmp_size + 1)
  const double size = 2.0 * t + 1.0;
  const double c = ::floor(size / 2.0);         // size // 2
  const double centre = static_cast<double>(ul) + c;
  Axis a;
  a.lo = clip64(ul, 0, extent);
  a.hi = clip64(br, 0, extent);
  a.centre = trunc_to_int64(centre);
  return a;
}

// Conservative box for the Fast variant: outside it the thresholded Gaussian is exactly 0.
HAL_HOST_DEVICE Axis fast_axis(int64_t pos, double sigma, int64_t extent) {
  double r = ::ceil(3.07 * sigma);  // pixels outside have |P - pos| >= r + 1 > 3.07 sigma
  const double lim = static_cast<double>(extent) + 1.0;
  r = r > lim ? lim : r;
  const int64_t ri = static_cast<int64_t>(r);
  Axis a;
  a.lo = clip64(pos - ri, 0, extent);
  a.hi = clip64(pos + ri + 1, 0, extent);
  a.centre = pos;
  return a;
}

HAL_HOST_DEVICE bool in_axis(int64_t P, const Axis& a) { return P >= a.lo && P < a.hi; }

// float32(2 sigma^2), the Gaussian's denominator in both variants.
HAL_HOST_DEVICE float gaussian_denominator(double sigma) { return static_cast<float>(2.0 * (sigma * sigma)); }

// Squared float32 offset of one axis in the truncated variant (numpy: (x - x0) ** 2 in float32).
HAL_HOST_DEVICE float truncated_square(int64_t P, int64_t centre) {
  const float d = static_cast<float>(P - centre);
  return d * d;
}

// Value of the truncated Gaussian inside its window; dx2 / dy2 from truncated_square.
HAL_HOST_DEVICE float truncated_value_sq(float dx2, float dy2, float den) { return hal_exp(-(dx2 + dy2) / den); }

HAL_HOST_DEVICE float truncated_value(int64_t X, int64_t Y, const Axis& ax, const Axis& ay, float den) {
  return truncated_value_sq(truncated_square(X, ax.centre), truncated_square(Y, ay.centre), den);
}

// The Fast variant's thresholded value (any pixel; exactly 0 outside fast_axis boxes).
HAL_HOST_DEVICE float fast_value_d(int64_t d, float den) {
  const float v = hal_exp(-(static_cast<float>(d) / den));
  return v > 0.01f ? v : 0.0f;
}

HAL_HOST_DEVICE float fast_value(int64_t X, int64_t Y, int64_t x, int64_t y, float den) {
  const int64_t dx = X - x, dy = Y - y;
  return fast_value_d(dx * dx + dy * dy, den);
}

// Vectorisable forms on int32 offsets dx = X - centre_x, dy = Y - centre_y (offset32 clamps a
// difference into int32; real windows are far inside that range). Bitwise equal to the forms above.
HAL_HOST_DEVICE int32_t offset32(int64_t P, int64_t centre) {
  return static_cast<int32_t>(clip64(P - centre, -(int64_t(1) << 30), int64_t(1) << 30));
}

HAL_HOST_DEVICE float truncated_value_off(int32_t dx, int32_t dy, float den) {
  const float fx = static_cast<float>(dx), fy = static_cast<float>(dy);
  return hal_exp(-(fx * fx + fy * fy) / den);
}

// d = dx^2 + dy^2 exactly in double (below 2^53), then rounded once to float as torch's int64 -> float.
HAL_HOST_DEVICE float fast_value_off(int32_t dx, int32_t dy, float den) {
  const double ddx = static_cast<double>(dx), ddy = static_cast<double>(dy);
  const float v = hal_exp(-(static_cast<float>(ddx * ddx + ddy * ddy) / den));
  return v > 0.01f ? v : 0.0f;
}

template <bool kFast>
HAL_HOST_DEVICE float gaussian_off(int32_t dx, int32_t dy, float den) {
  return kFast ? fast_value_off(dx, dy, den) : truncated_value_off(dx, dy, den);
}

// ---- (d) ground false ---------------------------------------------------------------------------

// `others` = (exact double sum of every keypoint's value) - (this keypoint's value).
HAL_HOST_DEVICE float clamp_false(double others) {
  const float v = static_cast<float>(others);
  return v > 1.0f ? 1.0f : (v < 0.0f ? 0.0f : v);
}

}  // namespace pseudo_label_math
}  // namespace hal_ext
