#pragma once
// The CPU first argmax of one heatmap, shared by the pseudo-label generators and the fused
// regression disparity (same result as a scan with pseudo_label_math::argmax_better).
#include <ATen/OpMathType.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "common/macros.h"
#include "ops/pseudo_label_math.h"

namespace hal_ext {

#define HAL_SIMD_OR(var) HAL_PRAGMA(omp simd reduction(| : var))

#if defined(__AVX512F__)
// first_index_of_max for float maps: 64 pixels per step as four compares into masks (== m, or unordered
// for NaN), where GCC reduces the portable loop's lanes with shuffles.
inline int64_t first_index_of_max_avx512(const float* p, int64_t n, float m, bool nan) {
  const __m512 mv = _mm512_set1_ps(m);
  const auto hits = [&](int64_t i) {
    const __m512 v = _mm512_loadu_ps(p + i);
    return nan ? _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q) : _mm512_cmp_ps_mask(v, mv, _CMP_EQ_OQ);
  };
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    const __mmask16 k[4] = {hits(i), hits(i + 16), hits(i + 32), hits(i + 48)};
    if ((k[0] | k[1] | k[2] | k[3]) == 0) continue;
    for (int j = 0;; ++j) {
      if (k[j]) return i + 16 * j + __builtin_ctz(k[j]);
    }
  }
  for (; i < n; ++i) {
    if (nan ? p[i] != p[i] : p[i] == m) return i;
  }
  return 0;  // unreachable for n > 0
}
#endif

// The first index of p[0, n) holding m, its maximum (nan: the first NaN), in blocks of 32 that stop at
// the first block holding it (the map is in L1/L2 from the pass that found m).
template <typename scalar_t, typename acc_t>
int64_t first_index_of_max(const scalar_t* p, int64_t n, acc_t m, bool nan) {
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<scalar_t, float> && std::is_same_v<acc_t, float>) {
    return first_index_of_max_avx512(p, n, m, nan);
  }
#endif
  constexpr int64_t L = 32;
  const int64_t full = n - n % L;
  auto is_max = [m, nan](acc_t v) { return nan ? v != v : v == m; };
  int64_t i = 0;
  for (; i < full; i += L) {
    const scalar_t* block = p + i;
    int32_t hit = 0;
    if (nan) {
      HAL_SIMD_OR(hit)
      for (int64_t l = 0; l < L; ++l) { const acc_t v = static_cast<acc_t>(block[l]); hit |= static_cast<int32_t>(v != v); }
    } else {
      HAL_SIMD_OR(hit)
      for (int64_t l = 0; l < L; ++l) hit |= static_cast<int32_t>(static_cast<acc_t>(block[l]) == m);
    }
    if (hit) break;
  }
  for (; i < n; ++i) {
    if (is_max(static_cast<acc_t>(p[i]))) return i;
  }
  return 0;  // unreachable for n > 0
}

// The first argmax of p[0, n) from its maximum m (NaN ignored) and whether it holds a NaN: the first NaN
// if so (NaN = max), else the first element equal to m (first_index_of_max).
template <typename scalar_t, typename acc_t>
pseudo_label_math::ArgMax<acc_t> argmax_from_max(const scalar_t* p, int64_t n, acc_t m, bool nan) {
  if (nan) m = static_cast<acc_t>(NAN);
  return {m, first_index_of_max(p, n, m, nan)};
}

// First argmax of p[0, n) (NaN = max, lowest index among equals), in two vectorised passes over
// blocks of L elements: the maximum and whether a NaN occurs (lane-wise max/or, L lanes), then the
// first element equal to it (or the first NaN), which re-reads the map from L1/L2 and stops at the
// first block that holds it. Equivalent to a scan with pseudo_label_math::argmax_better.
template <typename scalar_t>
pseudo_label_math::ArgMax<at::opmath_type<scalar_t>> map_argmax(const scalar_t* p, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int64_t L = 32;
  const int64_t full = n - n % L;
  acc_t m = static_cast<acc_t>(p[0]);
  bool nan = m != m;
  if (full > 0) {
    acc_t lane_max[L];
    int32_t lane_nan[L];
    for (int64_t l = 0; l < L; ++l) {
      lane_max[l] = static_cast<acc_t>(p[l]);
      lane_nan[l] = 0;
    }
    for (int64_t i = 0; i < full; i += L) {
      const scalar_t* block = p + i;
      HAL_SIMD
      for (int64_t l = 0; l < L; ++l) {
        const acc_t v = static_cast<acc_t>(block[l]);
        lane_max[l] = v > lane_max[l] ? v : lane_max[l];
        lane_nan[l] |= static_cast<int32_t>(v != v);
      }
    }
    for (int64_t l = 0; l < L; ++l) {
      m = lane_max[l] > m ? lane_max[l] : m;
      nan = nan || lane_nan[l] != 0;
    }
  }
  for (int64_t i = full; i < n; ++i) {
    const acc_t v = static_cast<acc_t>(p[i]);
    m = v > m ? v : m;
    nan = nan || v != v;
  }
  return argmax_from_max(p, n, m, nan);
}

#undef HAL_SIMD_OR

}  // namespace hal_ext
