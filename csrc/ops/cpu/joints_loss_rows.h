#pragma once
// One (b, k) heatmap row of the keypoint losses on the CPU (math in ops/joints_loss_math.h). The
// loops are written to vectorise (omp simd; hal_exp/hal_log for float). The target row may have any
// element type (the input dtype, or a float row that the fused regression disparity builds).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

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

// Row sums run over blocks of kSumBlock pixels: acc_t lanes within a block (vectorised), the block
// sums added in double. A float32 row sum's rounding then neither grows with the row's length nor
// depends on how many lanes the compiler gives the loop (AVX2, AVX-512, or one at -O1).
constexpr int64_t kSumBlock = 256;

// f(b0, b1) for the blocks [b0, b1) of the pixel range [begin, end).
template <typename F>
HAL_ROW_INLINE void for_each_block(int64_t begin, int64_t end, const F& f) {
  for (int64_t b0 = begin; b0 < end; b0 += kSumBlock) f(b0, std::min(end, b0 + kSumBlock));
}

// sum_{p0 <= p < p1} term(p), blocked.
template <typename acc_t, typename F>
HAL_ROW_INLINE double range_sum(int64_t p0, int64_t p1, const F& term) {
  double total = 0;
  for_each_block(p0, p1, [&](int64_t b0, int64_t b1) {
    acc_t s = 0;
    HAL_SIMD_SUM(s)
    for (int64_t p = b0; p < b1; ++p) s += term(p);
    total += static_cast<double>(s);
  });
  return total;
}

template <typename acc_t, typename F>
HAL_ROW_INLINE double row_sum(int64_t n, const F& term) {
  return range_sum<acc_t>(0, n, term);
}

// Asks for the pixels [p0, p1) of `row` (null: none) to be brought into cache. A KL row's first pass
// reads the row from memory and does little arithmetic; its second pass does much (exp, log) from
// cache. Prefetching the next row during the second pass overlaps the two.
template <typename T>
HAL_ROW_INLINE void prefetch_pixels(const T* row, int64_t p0, int64_t p1) {
#if defined(__GNUC__)
  if (!row) return;
  constexpr int64_t kLinePixels = 64 / sizeof(T);
  for (int64_t p = p0; p < p1; p += kLinePixels) __builtin_prefetch(row + p);
#endif
}

// sum_p 0.5 (z_p - x_p)^2
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE acc_t mse_row_sum(const in_t* z, const tgt_t* x, int64_t n) {
  return static_cast<acc_t>(row_sum<acc_t>(
      n, [&](int64_t p) { return math::mse_term<acc_t>(static_cast<acc_t>(z[p]), static_cast<acc_t>(x[p])); }));
}

template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE void mse_row_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t scale, in_t* out) {
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    out[p] = static_cast<in_t>(math::mse_grad<acc_t>(static_cast<acc_t>(z[p]), static_cast<acc_t>(x[p]), scale));
  }
}

// mse_row_sum, and in the same pass the values mse_row_grad writes for `scale`.
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE acc_t mse_row_sum_and_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t scale, in_t* out) {
  return static_cast<acc_t>(row_sum<acc_t>(n, [&](int64_t p) {
    const acc_t zp = static_cast<acc_t>(z[p]), xp = static_cast<acc_t>(x[p]);
    out[p] = static_cast<in_t>(math::mse_grad<acc_t>(zp, xp, scale));
    return math::mse_term<acc_t>(zp, xp);
  }));
}

template <typename acc_t>
struct KLRowStats {
  acc_t loss;  // unweighted row loss
  acc_t lse;   // logsumexp of the output row
  acc_t S;     // sum of (target + epsilon)
  double M, Z;  // max_p z_p and sum_p exp(z_p - M): lse = M + log Z
};

// Pixels per chunk of the KL rows' second pass: one AVX-512 vector of floats.
constexpr int64_t kKLChunk = 16;

// Whether any of the chunk's x'_p = x_p + eps is not 0 (NaN counts as not 0, and propagates). With
// AVX-512, a float chunk is one vector: one compare into a mask and one test of it, where GCC reduces the
// portable loop's lanes with a tree of shuffles (about 12 instructions per chunk; 6% of a KL row's time
// against a Gaussian target, one thread).
template <typename acc_t, typename tgt_t>
HAL_ROW_INLINE bool any_target(const tgt_t* x, acc_t eps) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<acc_t, float> && std::is_same_v<tgt_t, float> && kKLChunk == 16) {
    const __m512 v = _mm512_add_ps(_mm512_loadu_ps(x), _mm512_set1_ps(eps));
    return _mm512_cmp_ps_mask(v, _mm512_setzero_ps(), _CMP_NEQ_UQ) != 0;  // unordered: NaN is not 0
  }
#endif
  int any = 0;
  HAL_PRAGMA(omp simd reduction(| : any))
  for (int64_t i = 0; i < kKLChunk; ++i) any |= (static_cast<acc_t>(x[i]) + eps) != acc_t(0);
  return any != 0;
}

// sum_p [xlogy(t_p, t_p) - t_p z_p] in the pixel form (t_p = x'_p / S, as the CUDA rows and torch): for
// a row whose loss from its sums is not finite. That is either torch's inf/NaN too, or sums that
// overflow float where the pixel form does not (x'_p log x'_p or x'_p z_p beyond 3.4e38, t_p <= 1).
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE double kl_pixel_sum(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, acc_t S) {
  return row_sum<acc_t>(n, [&](int64_t p) {
    return math::kl_term<acc_t>((static_cast<acc_t>(x[p]) + eps) / S, static_cast<acc_t>(z[p]));
  });
}

// Two passes: (max z, S), then (Z = sum exp(z - max), XZ = sum x' z, P = sum xlogx(s x')), blocked, in
// chunks of kKLChunk pixels: a chunk whose x'_p are all 0 adds exactly 0 to P and skips the log, which
// is then paid only near a heatmap target's peaks. The row's loss from the sums in double
// (kl_row_loss_from_sums), or from kl_pixel_sum where that is not finite. kStoreExp: the second pass
// also stores exp(z_p - max) in e[p] (kl_row_forward_and_grad). The second pass prefetches the next
// row (z_next, x_next; null for none).
template <bool kStoreExp, typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLRowStats<acc_t> kl_row_stats(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, in_t* e,
                                              const in_t* z_next, const tgt_t* x_next) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  double S_sum = 0;
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    acc_t s = 0;
    HAL_PRAGMA(omp simd reduction(max : m) reduction(+ : s))
    for (int64_t p = p0; p < p1; ++p) {
      m = math::max_nan_ignoring<acc_t>(m, static_cast<acc_t>(z[p]));
      s += static_cast<acc_t>(x[p]) + eps;
    }
    S_sum += static_cast<double>(s);
  });
  // Pixel p's terms: exp(z_p - m) (stored when kStoreExp), x'_p z_p and, when kLog, xlogx(s x'_p) (s: the
  // sign of S, kl_row_loss_from_sums; a product by +-1 is exact).
  const acc_t sign = static_cast<acc_t>(math::kl_target_sign(S_sum));
  const auto terms = [&](auto log_tag, int64_t p, acc_t& zs, acc_t& xzs, acc_t& ps) {
    const acc_t zp = static_cast<acc_t>(z[p]), xp = static_cast<acc_t>(x[p]) + eps;
    const acc_t ep = hal_exp_nonpositive(zp - m);
    if constexpr (kStoreExp) e[p] = static_cast<in_t>(ep);
    zs += ep;
    xzs += xp * zp;
    if constexpr (decltype(log_tag)::value) ps += math::xlogx<acc_t>(sign * xp);
  };
  double Z = 0, XZ = 0, P = 0;
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    prefetch_pixels(z_next, p0, p1);
    prefetch_pixels(x_next, p0, p1);
    acc_t zs[kKLChunk] = {}, xzs[kKLChunk] = {}, ps[kKLChunk] = {};
    int64_t c = p0;
    for (; c + kKLChunk <= p1; c += kKLChunk) {
      if (any_target(x + c, eps)) {
        HAL_SIMD
        for (int64_t i = 0; i < kKLChunk; ++i) terms(std::true_type{}, c + i, zs[i], xzs[i], ps[i]);
      } else {
        HAL_SIMD
        for (int64_t i = 0; i < kKLChunk; ++i) terms(std::false_type{}, c + i, zs[i], xzs[i], ps[i]);
      }
    }
    for (int64_t i = 0; c + i < p1; ++i) terms(std::true_type{}, c + i, zs[i], xzs[i], ps[i]);  // the tail
    acc_t zb = 0, xzb = 0, pb = 0;
    for (int64_t i = 0; i < kKLChunk; ++i) zb += zs[i], xzb += xzs[i], pb += ps[i];
    Z += static_cast<double>(zb);
    XZ += static_cast<double>(xzb);
    P += static_cast<double>(pb);
  });
  const double lse = static_cast<double>(m) + std::log(Z);
  double loss = math::kl_row_loss_from_sums(P, XZ, S_sum, lse, n);
  if (!std::isfinite(loss)) {  // the pixel form's value (kl_pixel_sum)
    const acc_t S = static_cast<acc_t>(S_sum);
    loss = math::kl_row_loss<double>(kl_pixel_sum<acc_t>(z, x, n, eps, S), static_cast<double>(S / S), lse, n);
  }
  return {static_cast<acc_t>(loss), static_cast<acc_t>(lse), static_cast<acc_t>(S_sum), static_cast<double>(m), Z};
}

template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLRowStats<acc_t> kl_row_forward(const in_t* z, const tgt_t* x, int64_t n, acc_t eps,
                                                const in_t* z_next = nullptr, const tgt_t* x_next = nullptr) {
  return kl_row_stats<false, acc_t>(z, x, n, eps, static_cast<in_t*>(nullptr), z_next, x_next);
}

template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE void kl_row_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, acc_t lse, acc_t S, acc_t scale,
                        in_t* out) {
  const acc_t T = S / S, scale_over_S = scale / S;
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    const acc_t xp = static_cast<acc_t>(x[p]) + eps;
    out[p] = static_cast<in_t>(math::kl_grad<acc_t>(static_cast<acc_t>(z[p]), xp, lse, T, scale, scale_over_S));
  }
}

// Whether a row's gradient can be taken from the stored exp(z - M): a finite max and a finite Z (>= 1
// then: the max's own term is 1). Other rows (inf/NaN logits) take kl_row_grad, torch's propagation.
template <typename acc_t>
HAL_ROW_INLINE bool exp_reusable(const KLRowStats<acc_t>& k) {
  return std::isfinite(k.M) && std::isfinite(k.Z);
}

// The row's loss statistics and its gradient for scale s in out, with one exp per pixel: out holds
// exp(z_p - M) after the statistics pass, then s T exp(z_p - lse) - (s / S) x'_p (kl_grad_from_exp).
template <typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLRowStats<acc_t> kl_row_forward_and_grad(const in_t* z, const tgt_t* x, int64_t n, acc_t eps,
                                                         acc_t scale, in_t* out, const in_t* z_next = nullptr,
                                                         const tgt_t* x_next = nullptr) {
  const KLRowStats<acc_t> k = kl_row_stats<true, acc_t>(z, x, n, eps, out, z_next, x_next);
  if (!exp_reusable(k)) {
    kl_row_grad<acc_t>(z, x, n, eps, k.lse, k.S, scale, out);
    return k;
  }
  const acc_t T = k.S / k.S, scale_over_S = scale / k.S;
  const acc_t c = static_cast<acc_t>(static_cast<double>(scale) * static_cast<double>(T) / k.Z);
  HAL_SIMD
  for (int64_t p = 0; p < n; ++p) {
    out[p] = static_cast<in_t>(math::kl_grad_from_exp<acc_t>(static_cast<acc_t>(out[p]), static_cast<acc_t>(x[p]) + eps,
                                                             c, scale_over_S));
  }
  return k;
}

// The gradient scale of row r: g w_r / divisor for the row's incoming gradient g (the backward's; 1 for
// the unit gradient a forward writes, where 1 * w_r is w_r bit for bit) and weight w_r (none: 1).
template <typename acc_t>
HAL_ROW_INLINE acc_t row_grad_scale(acc_t g, const acc_t* w, int64_t r, acc_t divisor) {
  return (w ? g * w[r] : g) / divisor;
}

// Rows per parallel task: about 32K pixels, at least one row.
inline int64_t row_grain(int64_t n) { return n >= 32768 ? 1 : 32768 / (n > 0 ? n : 1); }

}  // namespace joints_loss_cpu
}  // namespace hal_ext
