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

// Asks for the pixels [p0, p1) of `row` (null: none) to be brought into cache: a KL row prefetches the
// next row during its pass of exps and logs, so that the next row's reads overlap this row's arithmetic.
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
  double M, Z;  // the shift (max_p z_p, or up to 64 below it: kl_row_stats) and sum_p exp(z_p - M): lse = M + log Z
};

// Pixels per chunk of the KL rows' sums pass: one AVX-512 vector of floats.
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

// A KL row's sums against a shift c: Z = sum_p exp(z_p - c) for any c with max_p z_p - c <= the gap below
// holds no overflow (4096 pixels of e^64 are 2.5e31) and gives lse = c + log Z, as the maximum itself
// would up to rounding. So a row takes c from its first block and is read in one pass (kl_sums_pass), which
// also finds the row's maximum; a row whose maximum lies further above c, or is not finite, or whose
// sums are not finite, or whose target sums to S < 0 (the pass takes S >= 0 for the sign in P) takes a
// second pass against its maximum and S's sign (the two-pass form). The gap is e^64 where the exps are
// kept in acc_t, e^8 where they are stored in a half type (whose largest value is 65504, e^11.09).
template <bool kStoreExp, typename acc_t, typename in_t>
constexpr double max_shift_gap() {
  return kStoreExp && !std::is_same_v<in_t, acc_t> ? 8.0 : 64.0;
}

// max_{p0 <= p < p1} z_p, NaN ignored (-inf for none).
template <typename acc_t, typename in_t>
HAL_ROW_INLINE acc_t range_max(const in_t* z, int64_t p0, int64_t p1) {
  acc_t m = -std::numeric_limits<acc_t>::infinity();
  HAL_PRAGMA(omp simd reduction(max : m))
  for (int64_t p = p0; p < p1; ++p) m = math::max_nan_ignoring<acc_t>(m, static_cast<acc_t>(z[p]));
  return m;
}

template <typename acc_t>
struct KLSums {
  double Z, XZ, P, S;  // sum exp(z - c), sum x' z, sum xlogx(s x'), sum x'
  acc_t m;             // max_p z_p (NaN ignored)
};

// One pass over the row against shift c, blocked: each block's maximum first (a loop of its own, which
// brings the block into L1), then per kKLChunk pixels exp(z_p - c) (stored in e[p] when kStoreExp, for
// kl_row_forward_and_grad), x'_p z_p, x'_p and, where the chunk's x'_p are not all 0, xlogx(s x'_p) (a
// chunk whose x'_p are all 0 adds exactly 0 to P and skips the log, which is then paid only near a
// heatmap target's peaks; s = +-1, exact). The next row (z_next, x_next; null for none) is prefetched.
template <bool kStoreExp, typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLSums<acc_t> kl_sums_pass(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, acc_t c, acc_t sign,
                                          in_t* e, const in_t* z_next, const tgt_t* x_next) {
  const auto terms = [&](auto log_tag, int64_t p, acc_t& zs, acc_t& xzs, acc_t& ps, acc_t& ss) {
    const acc_t zp = static_cast<acc_t>(z[p]), xp = static_cast<acc_t>(x[p]) + eps;
    const acc_t ep = hal_exp_nonpositive(zp - c);  // exact for 0 < z - c <= 64 too (fast_math.h)
    if constexpr (kStoreExp) e[p] = static_cast<in_t>(ep);
    zs += ep;
    xzs += xp * zp;
    ss += xp;
    if constexpr (decltype(log_tag)::value) ps += math::xlogx<acc_t>(sign * xp);
  };
  KLSums<acc_t> sums{0, 0, 0, 0, -std::numeric_limits<acc_t>::infinity()};
  for_each_block(0, n, [&](int64_t p0, int64_t p1) {
    prefetch_pixels(z_next, p0, p1);
    prefetch_pixels(x_next, p0, p1);
    sums.m = math::max_nan_ignoring<acc_t>(sums.m, range_max<acc_t>(z, p0, p1));
    acc_t zs[kKLChunk] = {}, xzs[kKLChunk] = {}, ps[kKLChunk] = {}, ss[kKLChunk] = {};
    int64_t q = p0;
    for (; q + kKLChunk <= p1; q += kKLChunk) {
      if (any_target(x + q, eps)) {
        HAL_SIMD
        for (int64_t i = 0; i < kKLChunk; ++i) terms(std::true_type{}, q + i, zs[i], xzs[i], ps[i], ss[i]);
      } else {
        HAL_SIMD
        for (int64_t i = 0; i < kKLChunk; ++i) terms(std::false_type{}, q + i, zs[i], xzs[i], ps[i], ss[i]);
      }
    }
    for (int64_t i = 0; q + i < p1; ++i) terms(std::true_type{}, q + i, zs[i], xzs[i], ps[i], ss[i]);  // the tail
    acc_t zb = 0, xzb = 0, pb = 0, sb = 0;
    for (int64_t i = 0; i < kKLChunk; ++i) zb += zs[i], xzb += xzs[i], pb += ps[i], sb += ss[i];
    sums.Z += static_cast<double>(zb);
    sums.XZ += static_cast<double>(xzb);
    sums.P += static_cast<double>(pb);
    sums.S += static_cast<double>(sb);
  });
  return sums;
}

// The row's statistics (see max_shift_gap): the loss from the sums in double (kl_row_loss_from_sums), or
// from kl_pixel_sum where that is not finite; M is the shift the exps were taken against.
template <bool kStoreExp, typename acc_t, typename in_t, typename tgt_t>
HAL_ROW_INLINE KLRowStats<acc_t> kl_row_stats(const in_t* z, const tgt_t* x, int64_t n, acc_t eps, in_t* e,
                                              const in_t* z_next, const tgt_t* x_next) {
  acc_t c = range_max<acc_t>(z, 0, std::min(n, kSumBlock));
  if (!std::isfinite(c)) c = 0;  // the pass finds the maximum, and the second pass takes it
  KLSums<acc_t> sums = kl_sums_pass<kStoreExp, acc_t>(z, x, n, eps, c, acc_t(1), e, z_next, x_next);
  const acc_t sign = static_cast<acc_t>(math::kl_target_sign(sums.S));
  constexpr acc_t kGap = static_cast<acc_t>(max_shift_gap<kStoreExp, acc_t, in_t>());
  if (!std::isfinite(sums.m) || !std::isfinite(sums.Z) || !(sums.m - c <= kGap) || sign < 0) {
    c = sums.m;
    sums = kl_sums_pass<kStoreExp, acc_t>(z, x, n, eps, c, sign, e, static_cast<const in_t*>(nullptr),
                                          static_cast<const tgt_t*>(nullptr));
  }
  const double m = static_cast<double>(c), Z = sums.Z, S_sum = sums.S;
  const double lse = m + std::log(Z);
  double loss = math::kl_row_loss_from_sums(sums.P, sums.XZ, S_sum, lse, n);
  if (!std::isfinite(loss)) {  // the pixel form's value (kl_pixel_sum)
    const acc_t S = static_cast<acc_t>(S_sum);
    loss = math::kl_row_loss<double>(kl_pixel_sum<acc_t>(z, x, n, eps, S), static_cast<double>(S / S), lse, n);
  }
  return {static_cast<acc_t>(loss), static_cast<acc_t>(lse), static_cast<acc_t>(S_sum), m, Z};
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

// Whether a row's gradient can be taken from the stored exp(z - M): a finite shift and a finite Z (>= 1
// then: the max's own term is at least 1). Other rows (inf/NaN logits) take kl_row_grad, torch's propagation.
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
