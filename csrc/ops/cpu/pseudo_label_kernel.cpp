// CPU kernels of hal_ext::pseudo_label_2d and hal_ext::fast_pseudo_label_2d (math in
// pseudo_label_math.h).
//
//   (x, y)_{b,k}       = first argmax of y[b, k] over H*W (NaN = max); truncated variant: (0, 0) unless max > 0
//   ground_truth[b, k] = G(X, Y; x_{b,k}, y_{b,k})   (tllib's truncated, or the Fast thresholded, Gaussian)
//   ground_false[b, k] = clamp(sum_{j != k} ground_truth[b, j], 0, 1)
//
// No table. Pass 1, one task per (b, k) map: a vectorised first-argmax scan; only the peak's window
// is kept. Pass 2, one task per (b, band of rows): the exact (double) sum of the K Gaussians over the
// band (non-zero only inside the windows) and its clamped float copy `base` are built in a small
// scratch; then each map k's band is written front to back, once per pixel: zeros / its Gaussian
// for ground_truth, `base` / clamp(sum - own) for ground_false. Two sequential write streams at a
// time, so the stores run at copy speed.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/checks.h"
#include "common/cpu_parallel.h"
#include "common/macros.h"
#include "ops/cpu/map_argmax.h"
#include "ops/pseudo_label.h"
#include "ops/pseudo_label_math.h"

namespace hal_ext {
namespace {

namespace math = pseudo_label_math;


// out[i] = G(dx0 + i, dy) for i in [0, n).
template <bool kFast>
inline void gaussian_row(float* out, int32_t n, int32_t dx0, int32_t dy, float den) {
  HAL_SIMD
  for (int32_t i = 0; i < n; ++i) out[i] = math::gaussian_off<kFast>(dx0 + i, dy, den);
}

template <bool kFast>
void write_maps(const math::Axis* wx, const math::Axis* wy, double sigma, int64_t B, int64_t K, int64_t H,
                int64_t W, float* gt, float* gf) {
  const float den = math::gaussian_denominator(sigma);
  const int64_t HW = H * W;
  // Rows per band: the whole map up to 32K pixels (scratch of 12 bytes a pixel stays in L2).
  const int64_t band = std::max<int64_t>(1, std::min<int64_t>(H, 32768 / std::max<int64_t>(W, 1)));
  const int64_t bands = (H + band - 1) / band;
  at::parallel_for(0, B * bands, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> total(band * W);
    std::vector<float> base(band * W), row(W);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t b = t / bands, Y0 = (t % bands) * band, Y1 = std::min(H, Y0 + band);
      const int64_t n_px = (Y1 - Y0) * W;
      const math::Axis* ax = wx + b * K;
      const math::Axis* ay = wy + b * K;
      // The window rows of keypoint j inside the band: [max(Y0, lo), min(Y1, hi)).
      auto rows_of = [&](int64_t j, int64_t* r0, int64_t* r1) {
        *r0 = std::max(Y0, ay[j].lo);
        *r1 = std::min(Y1, ay[j].hi);
        return *r0 < *r1 && ax[j].lo < ax[j].hi;
      };
      double* tot = total.data();
      std::fill(tot, tot + n_px, 0.0);
      bool any = false;
      for (int64_t j = 0; j < K; ++j) {
        int64_t r0, r1;
        if (!rows_of(j, &r0, &r1)) continue;
        any = true;
        const int64_t lo = ax[j].lo;
        const int32_t n = static_cast<int32_t>(ax[j].hi - lo), dx0 = math::offset32(lo, ax[j].centre);
        for (int64_t Y = r0; Y < r1; ++Y) {
          gaussian_row<kFast>(row.data(), n, dx0, math::offset32(Y, ay[j].centre), den);
          double* t_row = tot + (Y - Y0) * W + lo;
          HAL_SIMD
          for (int32_t i = 0; i < n; ++i) t_row[i] += static_cast<double>(row[i]);
        }
      }
      float* bs = base.data();
      if (any) {
        HAL_SIMD
        for (int64_t i = 0; i < n_px; ++i) bs[i] = math::clamp_false(tot[i]);
      }
      for (int64_t k = 0; k < K; ++k) {
        float* gt_k = gt + (b * K + k) * HW + Y0 * W;
        float* gf_k = gf + (b * K + k) * HW + Y0 * W;
        int64_t r0, r1;
        if (!rows_of(k, &r0, &r1)) {
          std::memset(gt_k, 0, n_px * sizeof(float));
          if (any) std::memcpy(gf_k, bs, n_px * sizeof(float));
          else std::memset(gf_k, 0, n_px * sizeof(float));
          continue;
        }
        // Rows above the window.
        const int64_t above = (r0 - Y0) * W;
        std::memset(gt_k, 0, above * sizeof(float));
        std::memcpy(gf_k, bs, above * sizeof(float));
        const int64_t lo = ax[k].lo, hi = ax[k].hi;
        const int32_t n = static_cast<int32_t>(hi - lo), dx0 = math::offset32(lo, ax[k].centre);
        for (int64_t Y = r0; Y < r1; ++Y) {
          const int64_t o = (Y - Y0) * W;
          float* g = gt_k + o;
          float* f = gf_k + o;
          std::memset(g, 0, lo * sizeof(float));
          std::memcpy(f, bs + o, lo * sizeof(float));
          gaussian_row<kFast>(g + lo, n, dx0, math::offset32(Y, ay[k].centre), den);
          const double* t_row = tot + o + lo;
          HAL_SIMD
          for (int32_t i = 0; i < n; ++i) f[lo + i] = math::clamp_false(t_row[i] - static_cast<double>(g[lo + i]));
          std::memset(g + hi, 0, (W - hi) * sizeof(float));
          std::memcpy(f + hi, bs + o + hi, (W - hi) * sizeof(float));
        }
        // Rows below the window.
        const int64_t o = (r1 - Y0) * W;
        std::memset(gt_k + o, 0, (n_px - o) * sizeof(float));
        std::memcpy(gf_k + o, bs + o, (n_px - o) * sizeof(float));
      }
    }
  });
}

template <bool kFast>
std::tuple<at::Tensor, at::Tensor> pseudo_label_cpu(const at::Tensor& input, double sigma) {
  check_pseudo_label_args(input, sigma);
  const at::Tensor y = input.contiguous();
  const int64_t B = y.size(0), K = y.size(1), H = y.size(2), W = y.size(3);
  const auto options = y.options().dtype(at::kFloat);
  at::Tensor gt = at::empty({B, K, H, W}, options), gf = at::empty({B, K, H, W}, options);
  if (gt.numel() == 0) return {gt, gf};
  const int64_t maps = B * K, HW = H * W;
  std::vector<math::Axis> wx(maps), wy(maps);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(), "pseudo_label_2d_cpu", [&] {
    const scalar_t* data = y.const_data_ptr<scalar_t>();
    const int64_t grain = std::max<int64_t>(1, 65536 / HW);
    at::parallel_for(0, maps, grain, [&](int64_t m0, int64_t m1) {
      for (int64_t m = m0; m < m1; ++m) {
        const auto best = map_argmax(data + m * HW, HW);
        int64_t px, py;
        math::peak_position(best.index, best.value, W, /*max_rule=*/!kFast, &px, &py);
        if constexpr (kFast) {
          wx[m] = math::fast_axis(px, sigma, W);
          wy[m] = math::fast_axis(py, sigma, H);
        } else {
          wx[m] = math::truncated_axis(px, sigma, W);
          wy[m] = math::truncated_axis(py, sigma, H);
        }
      }
    });
  });
  write_maps<kFast>(wx.data(), wy.data(), sigma, B, K, H, W, gt.mutable_data_ptr<float>(),
                    gf.mutable_data_ptr<float>());
  return {gt, gf};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("pseudo_label_2d", &pseudo_label_cpu<false>);
  m.impl("fast_pseudo_label_2d", &pseudo_label_cpu<true>);
}

}  // namespace hal_ext
