// CPU kernels of hal_ext::classification_mdd (math and formula in mdd_math.h).
// Forward: one pass over the samples (rows) computing the first argmax of y, the max and the exp sums
// of y_adv for the source and target sides, the per-sample loss and the statistics the backward
// needs; reductions sum the per-sample losses in a fixed order (deterministic).
// Backward: one pass reading y_adv and the statistics, writing both gradients.
// (N, C) logits are processed row by row, vectorised over the classes; (N, C, d1..dk) logits in
// tiles of consecutive positions d, vectorised over d (class stride D = prod(d), no permute copy).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "common/checks.h"
#include "common/cpu_reduce.h"
#include "common/fast_math.h"
#include "common/loss_dtype.h"
#include "common/macros.h"
#include "common/reduction.h"
#include "ops/mdd.h"
#include "ops/mdd_math.h"

namespace hal_ext {
namespace {

namespace math = mdd_math;

constexpr int64_t kTile = 64;           // positions d per tile (K-dim logits)
constexpr int64_t kGrainElements = 8192;  // logits per parallel task, at least

#define HAL_SIMD_MAX(var) HAL_PRAGMA(omp simd reduction(max : var))
#define HAL_SIMD_MIN(var) HAL_PRAGMA(omp simd reduction(min : var))

// First argmax of a contiguous row (NaN counts as the maximum), vectorised in two passes.
template <typename scalar_t, typename acc_t>
inline int32_t row_argmax(const scalar_t* y, int32_t c) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  int32_t nans = 0;
  HAL_PRAGMA(omp simd reduction(max : best) reduction(+ : nans))
  for (int32_t j = 0; j < c; ++j) {
    const acc_t v = static_cast<acc_t>(y[j]);
    best = v > best ? v : best;
    nans += v != v;
  }
  int32_t h = c;
  if (nans) {
    HAL_SIMD_MIN(h)
    for (int32_t j = 0; j < c; ++j) {
      const acc_t v = static_cast<acc_t>(y[j]);
      h = std::min(h, v != v ? j : c);
    }
  } else {
    HAL_SIMD_MIN(h)
    for (int32_t j = 0; j < c; ++j) {
      const acc_t v = static_cast<acc_t>(y[j]);
      h = std::min(h, v == best ? j : c);
    }
  }
  return h < c ? h : 0;
}

template <typename acc_t>
struct RowSums {
  acc_t m, others, e_h, z_h;
};

// Max of a contiguous row and the sum of exp(z_j - max) over j != h. With kStore, also writes
// e_j = exp(z_j - max) to `e` (the forward-with-gradient kernel scales them into the gradient).
template <bool kStore, typename scalar_t, typename acc_t>
inline RowSums<acc_t> row_sums(const scalar_t* z, int32_t c, int32_t h, acc_t* e) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  HAL_SIMD_MAX(m)
  for (int32_t j = 0; j < c; ++j) {
    const acc_t v = static_cast<acc_t>(z[j]);
    m = v > m ? v : m;
  }
  acc_t others = 0;
  HAL_SIMD_SUM(others)
  for (int32_t j = 0; j < c; ++j) {
    const acc_t e_j = hal_exp_nonpositive(static_cast<acc_t>(z[j]) - m);
    if constexpr (kStore) e[j] = e_j;
    others += j != h ? e_j : acc_t(0);
  }
  const acc_t z_h = static_cast<acc_t>(z[h]);
  return {m, others, hal_exp_nonpositive(z_h - m), z_h};
}

// o_j *= a over a row (the stored exponentials become a * p_j * S).
template <typename acc_t>
inline void scale_row(acc_t* o, int32_t c, acc_t a) {
  HAL_SIMD
  for (int32_t j = 0; j < c; ++j) o[j] *= a;
}

// K-dim logits: the argmax of y and the sums of y_adv for a tile of `len` consecutive positions d
// (class stride D), vectorised over d. Writes per position: best value and argmax h, max m, the sum
// of exp(z - m) over the other classes, exp(z_h - m) and z_h.
template <typename scalar_t, typename acc_t>
void tile_sums(const scalar_t* y, const scalar_t* z, int64_t D, int32_t c32, int64_t len, acc_t* bs, int32_t* hs,
               acc_t* ms, acc_t* os, acc_t* es, acc_t* zhs) {
  HAL_SIMD
  for (int64_t l = 0; l < len; ++l) {
    bs[l] = static_cast<acc_t>(y[l]);
    hs[l] = 0;
    ms[l] = -std::numeric_limits<acc_t>::infinity();
    os[l] = 0;
    es[l] = 0;
    zhs[l] = 0;
  }
  for (int32_t c = 1; c < c32; ++c) {
    const scalar_t* row = y + c * D;
    HAL_SIMD
    for (int64_t l = 0; l < len; ++l) {
      const acc_t v = static_cast<acc_t>(row[l]);
      const bool takes = math::argmax_takes(bs[l], v);
      bs[l] = takes ? v : bs[l];
      hs[l] = takes ? c : hs[l];
    }
  }
  for (int32_t c = 0; c < c32; ++c) {
    const scalar_t* row = z + c * D;
    HAL_SIMD
    for (int64_t l = 0; l < len; ++l) {
      const acc_t v = static_cast<acc_t>(row[l]);
      ms[l] = v > ms[l] ? v : ms[l];
    }
  }
  for (int32_t c = 0; c < c32; ++c) {
    const scalar_t* row = z + c * D;
    HAL_SIMD
    for (int64_t l = 0; l < len; ++l) {
      const acc_t v = static_cast<acc_t>(row[l]);
      const acc_t e = hal_exp_nonpositive(v - ms[l]);
      const bool is_h = hs[l] == c;
      os[l] += is_h ? acc_t(0) : e;
      es[l] = is_h ? e : es[l];
      zhs[l] = is_h ? v : zhs[l];
    }
  }
}

// Backward of one (N, C) row: o_j = a * exp(z_j - m) (the h entry is overwritten by the caller).
template <typename scalar_t, typename acc_t>
void row_grads(const scalar_t* z, scalar_t* o, int32_t c, acc_t m, acc_t a) {
  HAL_SIMD
  for (int32_t j = 0; j < c; ++j) {
    o[j] = static_cast<scalar_t>(a * hal_exp_nonpositive(static_cast<acc_t>(z[j]) - m));
  }
}

// Per-position statistics of one side of the K-dim backward (pointers at the sample's first position).
template <typename acc_t>
struct LineStats {
  const acc_t* m;
  const acc_t* inv;
  const acc_t* coef;
  const acc_t* q;
  const int64_t* h;
};

// Backward of one K-dim line (sample n, class c) of D positions; g: per-position incoming gradients
// (reduction 'none') or null, then g_scalar everywhere.
template <typename scalar_t, typename acc_t>
void line_grads(const scalar_t* z, scalar_t* o, LineStats<acc_t> st, int64_t c, const acc_t* g, acc_t g_scalar,
                int64_t D) {
  auto body = [&](int64_t d, acc_t g_d) {
    const acc_t gcoef = g_d * st.coef[d];
    const acc_t e = hal_exp_nonpositive(static_cast<acc_t>(z[d]) - st.m[d]);
    o[d] = static_cast<scalar_t>(math::logit_grad(st.h[d] == c, gcoef * st.inv[d], e, gcoef * st.q[d]));
  };
  if (g) {  // two loops: a null test inside the loop keeps GCC from vectorising it
    HAL_SIMD
    for (int64_t d = 0; d < D; ++d) body(d, g[d]);
  } else {
    HAL_SIMD
    for (int64_t d = 0; d < D; ++d) body(d, g_scalar);
  }
}

// Everything a finished sample row writes.
template <typename acc_t>
struct RowResult {
  acc_t loss;
  acc_t st[math::kStats];
};

template <typename acc_t>
inline RowResult<acc_t> finish_row(const RowSums<acc_t>& s, const RowSums<acc_t>& t, acc_t margin, acc_t w_s,
                                   acc_t w_t) {
  RowResult<acc_t> r;
  acc_t inv_s, q_s, inv_t, q_t, coef_t;
  const acc_t l_s = math::source_term(s.m, s.others, s.e_h, s.z_h, inv_s, q_s);
  const acc_t l_t = math::target_term(t.others, t.e_h, inv_t, q_t, coef_t);
  r.loss = math::combine(margin, l_s, w_s, l_t, w_t);
  r.st[math::kStatMaxS] = s.m;
  r.st[math::kStatInvS] = inv_s;
  r.st[math::kStatCoefS] = -margin * w_s;
  r.st[math::kStatQS] = q_s;
  r.st[math::kStatMaxT] = t.m;
  r.st[math::kStatInvT] = inv_t;
  r.st[math::kStatCoefT] = w_t * coef_t;
  r.st[math::kStatQT] = q_t;
  return r;
}

// Unit gradient of one (N, C) row from its stored exponentials: the backward's formula (mdd_math.h)
// with incoming gradient g_unit (1/M for 'mean', else 1). k: first statistic of the side.
template <typename acc_t>
inline void unit_row_grads(acc_t* o, int32_t c, int32_t h, const acc_t* st, int k, acc_t g_unit) {
  const acc_t gc = g_unit * st[k + 2];
  scale_row(o, c, gc * st[k + 1]);
  o[h] = -(gc * st[k + 3]);
}

// The forward. With `grads` (non-null; only where mdd_detail::fused_grad_supported), it also writes the
// gradients of the loss for a unit incoming gradient, from the exponentials the forward computes
// anyway (saving the backward's exp pass).
std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd_forward(
    const at::Tensor& y_s_in, const at::Tensor& y_s_adv_in, const at::Tensor& y_t_in, const at::Tensor& y_t_adv_in,
    const std::optional<at::Tensor>& w_s_in, const std::optional<at::Tensor>& w_t_in, double margin_d,
    int64_t reduction, std::optional<at::ScalarType> out_dtype, std::pair<at::Tensor, at::Tensor>* grads) {
  const auto geo = mdd_detail::check_classification(y_s_in, y_s_adv_in, y_t_in, y_t_adv_in, w_s_in, w_t_in, reduction);
  const Reduction red = to_reduction(reduction);
  const at::Tensor y_s = y_s_in.contiguous(), y_s_adv = y_s_adv_in.contiguous();
  const at::Tensor y_t = y_t_in.contiguous(), y_t_adv = y_t_adv_in.contiguous();
  const at::Tensor w_s = mdd_detail::expand_weight(w_s_in, geo.sample_shape, y_s_adv);
  const at::Tensor w_t = mdd_detail::expand_weight(w_t_in, geo.sample_shape, y_s_adv);
  const auto dtype = y_s_adv.scalar_type();
  const auto acc_dtype = at::toOpMathType(dtype);
  const auto loss_dtype = result_dtype(out_dtype, dtype);
  const int64_t M = geo.m, C = geo.c, D = geo.d;
  at::Tensor stats = at::empty({math::kStats, M}, y_s_adv.options().dtype(acc_dtype));
  at::Tensor argmax = at::empty({2, M}, y_s_adv.options().dtype(at::kLong));
  at::Tensor out = red == Reduction::None ? at::empty(geo.sample_shape, y_s_adv.options().dtype(loss_dtype))
                                          : at::empty({}, y_s_adv.options().dtype(loss_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "classification_mdd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t margin = static_cast<acc_t>(margin_d);
    const scalar_t* ys = y_s.const_data_ptr<scalar_t>();
    const scalar_t* zs = y_s_adv.const_data_ptr<scalar_t>();
    const scalar_t* yt = y_t.const_data_ptr<scalar_t>();
    const scalar_t* zt = y_t_adv.const_data_ptr<scalar_t>();
    const scalar_t* ws = w_s.defined() ? w_s.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wt = w_t.defined() ? w_t.const_data_ptr<scalar_t>() : nullptr;
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    int64_t* am = argmax.mutable_data_ptr<int64_t>();
    // Per-sample losses in acc_t: the output itself for 'none' when it has that dtype.
    at::Tensor buffer;
    acc_t* row_loss;
    if (red == Reduction::None && loss_dtype == acc_dtype) {
      row_loss = out.mutable_data_ptr<acc_t>();
    } else {
      buffer = at::empty({M}, y_s_adv.options().dtype(acc_dtype));
      row_loss = buffer.mutable_data_ptr<acc_t>();
    }
    auto store = [&](int64_t r, int32_t h_s, int32_t h_t, const RowResult<acc_t>& res) {
      row_loss[r] = res.loss;
      for (int k = 0; k < math::kStats; ++k) st[k * M + r] = res.st[k];
      am[r] = h_s;
      am[M + r] = h_t;
    };
    auto weight = [](const scalar_t* w, int64_t r) { return w ? static_cast<acc_t>(w[r]) : acc_t(1); };
    const int32_t c32 = static_cast<int32_t>(C);
    if (D == 1) {
      // With grads: the (N, C) float/double case (mdd_detail::fused_grad_supported), acc_t == scalar_t.
      acc_t* gs = nullptr;
      acc_t* gt = nullptr;
      if (grads) {
        grads->first = at::empty(y_s_adv.sizes(), y_s_adv.options());
        grads->second = at::empty(y_t_adv.sizes(), y_t_adv.options());
        gs = reinterpret_cast<acc_t*>(grads->first.mutable_data_ptr<scalar_t>());
        gt = reinterpret_cast<acc_t*>(grads->second.mutable_data_ptr<scalar_t>());
      }
      const acc_t g_unit = red == Reduction::Mean ? acc_t(1) / static_cast<acc_t>(M) : acc_t(1);
      const int64_t grain = std::max<int64_t>(1, kGrainElements / C);
      at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const int64_t off = r * C;
          const int32_t h_s = row_argmax<scalar_t, acc_t>(ys + off, c32);
          const int32_t h_t = row_argmax<scalar_t, acc_t>(yt + off, c32);
          const auto s = gs ? row_sums<true, scalar_t, acc_t>(zs + off, c32, h_s, gs + off)
                            : row_sums<false, scalar_t, acc_t>(zs + off, c32, h_s, nullptr);
          const auto t = gt ? row_sums<true, scalar_t, acc_t>(zt + off, c32, h_t, gt + off)
                            : row_sums<false, scalar_t, acc_t>(zt + off, c32, h_t, nullptr);
          const RowResult<acc_t> res = finish_row(s, t, margin, weight(ws, r), weight(wt, r));
          store(r, h_s, h_t, res);
          if (gs) {
            unit_row_grads(gs + off, c32, h_s, res.st, math::kStatMaxS, g_unit);
            unit_row_grads(gt + off, c32, h_t, res.st, math::kStatMaxT, g_unit);
          }
        }
      });
    } else {
      const int64_t tiles_per_n = (D + kTile - 1) / kTile;
      const int64_t grain = std::max<int64_t>(1, kGrainElements / (kTile * C));
      at::parallel_for(0, geo.n * tiles_per_n, grain, [&](int64_t t0, int64_t t1) {
        acc_t best[2][kTile], m[2][kTile], others[2][kTile], e_h[2][kTile], z_h[2][kTile];
        int32_t h[2][kTile];
        for (int64_t tile = t0; tile < t1; ++tile) {
          const int64_t n = tile / tiles_per_n;
          const int64_t d0 = (tile % tiles_per_n) * kTile;
          const int64_t len = std::min(kTile, D - d0);
          const int64_t base = n * C * D + d0;
          for (int side = 0; side < 2; ++side) {
            tile_sums<scalar_t, acc_t>((side == 0 ? ys : yt) + base, (side == 0 ? zs : zt) + base, D, c32, len,
                                       best[side], h[side], m[side], others[side], e_h[side], z_h[side]);
          }
          for (int64_t l = 0; l < len; ++l) {
            const int64_t r = n * D + d0 + l;
            const RowSums<acc_t> s{m[0][l], others[0][l], e_h[0][l], z_h[0][l]};
            const RowSums<acc_t> t{m[1][l], others[1][l], e_h[1][l], z_h[1][l]};
            store(r, h[0][l], h[1][l], finish_row(s, t, margin, weight(ws, r), weight(wt, r)));
          }
        }
      });
    }
    if (red == Reduction::None) {
      if (loss_dtype != acc_dtype) {
        scalar_t* o = out.mutable_data_ptr<scalar_t>();
        for (int64_t r = 0; r < M; ++r) o[r] = static_cast<scalar_t>(row_loss[r]);
      }
    } else {
      const double total = ordered_parallel_sum<double>(M, [&](int64_t b, int64_t e) {
        double s = 0;
        for (int64_t r = b; r < e; ++r) s += static_cast<double>(row_loss[r]);
        return s;
      });
      const double value = red == Reduction::Mean ? total / static_cast<double>(M) : total;
      with_scalar_or_acc_type<scalar_t>(loss_dtype, [&](auto tag) {
        using out_t = typename decltype(tag)::type;
        *out.mutable_data_ptr<out_t>() = static_cast<out_t>(value);
      });
    }
  });
  return {out, stats, argmax};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd_cpu(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
    std::optional<at::ScalarType> out_dtype) {
  return classification_mdd_forward(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, out_dtype, nullptr);
}

std::tuple<at::Tensor, at::Tensor> classification_mdd_backward_cpu(const at::Tensor& grad_in,
                                                                   const at::Tensor& y_s_adv_in,
                                                                   const at::Tensor& y_t_adv_in,
                                                                   const at::Tensor& stats_in,
                                                                   const at::Tensor& argmax_in, int64_t reduction) {
  const auto geo =
      mdd_detail::check_classification_backward(grad_in, y_s_adv_in, y_t_adv_in, stats_in, argmax_in, reduction);
  const Reduction red = to_reduction(reduction);
  const at::Tensor zs_t = y_s_adv_in.contiguous(), zt_t = y_t_adv_in.contiguous();
  const at::Tensor stats = stats_in.contiguous(), argmax = argmax_in.contiguous();
  const auto dtype = zs_t.scalar_type();
  at::Tensor gs = at::empty(zs_t.sizes(), zs_t.options()), gt = at::empty(zt_t.sizes(), zt_t.options());
  const int64_t M = geo.m, C = geo.c, D = geo.d;
  if (M == 0) return {gs, gt};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "classification_mdd_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor grad_acc = grad_in.to(at::toOpMathType(dtype)).contiguous();
    const acc_t* g = grad_acc.const_data_ptr<acc_t>();
    acc_t g_scalar = 0;
    if (red != Reduction::None) {
      g_scalar = red == Reduction::Mean ? g[0] / static_cast<acc_t>(M) : g[0];
    }
    auto G = [&](int64_t r) { return red == Reduction::None ? g[r] : g_scalar; };
    const scalar_t* zs = zs_t.const_data_ptr<scalar_t>();
    const scalar_t* zt = zt_t.const_data_ptr<scalar_t>();
    const acc_t* st = stats.const_data_ptr<acc_t>();
    const int64_t* am = argmax.const_data_ptr<int64_t>();
    scalar_t* os = gs.mutable_data_ptr<scalar_t>();
    scalar_t* ot = gt.mutable_data_ptr<scalar_t>();
    const int32_t c32 = static_cast<int32_t>(C);
    if (D == 1) {
      const int64_t grain = std::max<int64_t>(1, kGrainElements / C);
      at::parallel_for(0, M, grain, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const acc_t gr = G(r);
          for (int side = 0; side < 2; ++side) {
            const int k = side == 0 ? 0 : 4;
            const scalar_t* z = (side == 0 ? zs : zt) + r * C;
            scalar_t* o = (side == 0 ? os : ot) + r * C;
            const acc_t m = st[(k + 0) * M + r];
            const acc_t gc = gr * st[(k + 2) * M + r];
            const acc_t a = gc * st[(k + 1) * M + r];
            row_grads<scalar_t, acc_t>(z, o, c32, m, a);
            o[am[side * M + r]] = static_cast<scalar_t>(-(gc * st[(k + 3) * M + r]));
          }
        }
      });
    } else {
      // Lines (n, c) of D contiguous positions.
      const int64_t grain = std::max<int64_t>(1, kGrainElements / D);
      at::parallel_for(0, geo.n * C, grain, [&](int64_t l0, int64_t l1) {
        for (int64_t line = l0; line < l1; ++line) {
          const int64_t n = line / C;
          const int64_t c = line % C;
          for (int side = 0; side < 2; ++side) {
            const int k = side == 0 ? 0 : 4;
            const scalar_t* z = (side == 0 ? zs : zt) + line * D;
            scalar_t* o = (side == 0 ? os : ot) + line * D;
            const int64_t first = n * D;
            const LineStats<acc_t> ls{st + (k + 0) * M + first, st + (k + 1) * M + first, st + (k + 2) * M + first,
                                      st + (k + 3) * M + first, am + side * M + first};
            line_grads<scalar_t, acc_t>(z, o, ls, c, red == Reduction::None ? g + first : nullptr, g_scalar, D);
          }
        }
      });
    }
  });
  return {gs, gt};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> classification_mdd_with_grad_cpu(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction) {
  if (!mdd_detail::fused_grad_supported(y_s_adv)) {  // K-dim or half-precision logits
    return mdd_detail::classification_mdd_with_grad_composite(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin,
                                                              reduction);
  }
  std::pair<at::Tensor, at::Tensor> grads;
  auto [out, stats, argmax] =
      classification_mdd_forward(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, std::nullopt, &grads);
  return {out, stats, argmax, grads.first, grads.second};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("classification_mdd", &classification_mdd_cpu);
  m.impl("_classification_mdd_with_grad", &classification_mdd_with_grad_cpu);
  m.impl("_classification_mdd_backward", &classification_mdd_backward_cpu);
}

}  // namespace hal_ext
