#pragma once
// Branch-free float32 exp and log that GCC can vectorise inside the CPU kernels' inner loops
// (std::exp/std::log are opaque library calls that block vectorisation). Cephes-style range
// reduction and minimax polynomials, about 1 ulp. NaN and infinities follow std::exp/std::log.
// On the GPU the same names map to CUDA's expf/logf, and float64 always uses the libm functions.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "macros.h"

namespace hal_ext {

#if !defined(__CUDA_ARCH__)
namespace detail {
inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, sizeof f); return f; }
inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, sizeof i); return i; }

// exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2: returns exp(r) and n, for x already
// clamped to [-87.33654, 88.72283] or NaN. Adding 1.5 * 2^23 rounds x / ln2 to an integer held in
// the low mantissa bits: n is read from those bits, so a NaN x (which makes exp(r) NaN) needs no
// float-to-int conversion, whose result would be undefined.
inline float exp_reduced(float xc, int32_t* n_out) {
  constexpr float kShifter = 12582912.0f;  // 1.5 * 2^23
  const float t = xc * 1.44269504088896341f + kShifter;
  const float n = t - kShifter;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r2 + r + 1.0f;
  *n_out = float_to_bits(t) - float_to_bits(kShifter);
  return p;
}
}  // namespace detail
#endif

HAL_HOST_DEVICE float hal_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float lo = -87.33654f, hi = 88.72283f;
  float xc = x < lo ? lo : x;  // NaN stays NaN and propagates through exp(r)
  xc = xc > hi ? hi : xc;
  int32_t ni;
  const float p = detail::exp_reduced(xc, &ni);
  // 2^n built in two halves so that n = 128 (x near the overflow bound) stays finite until the product.
  const int32_t n1 = ni >> 1;
  const float s1 = detail::bits_to_float((n1 + 127) << 23);
  const float s2 = detail::bits_to_float((ni - n1 + 127) << 23);
  float y = p * s1 * s2;
  y = x < lo ? 0.0f : y;
  y = x > hi ? INFINITY : y;
  return y;
#endif
}

// hal_exp for arguments x <= 0 or NaN (softmax terms z - max z, z - logsumexp), and x up to 88 (n <=
// 127: the KL rows' terms against a shift below the row's maximum, joints_loss_rows.h): the same values
// bit for bit (multiplying by the two halves of 2^n is exact there), without the overflow path, and 2^n
// in one step (-126 <= n <= 127).
HAL_HOST_DEVICE float hal_exp_nonpositive(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  const float lo = -87.33654f;
  const float xc = x < lo ? lo : x;  // NaN stays NaN and propagates through exp(r)
  int32_t ni;
  const float p = detail::exp_reduced(xc, &ni);
  float y = p * detail::bits_to_float((ni + 127) << 23);
  y = x < lo ? 0.0f : y;
  return y;
#endif
}

HAL_HOST_DEVICE double hal_exp(double x) { return ::exp(x); }
HAL_HOST_DEVICE double hal_exp_nonpositive(double x) { return ::exp(x); }

HAL_HOST_DEVICE float hal_log(float x) {
#if defined(__CUDA_ARCH__)
  return logf(x);
#else
  // log(x) = e * ln2 + log(m), m in [sqrt(1/2), sqrt(2)). Subnormals are scaled by 2^23 first.
  const bool subnormal = x < 1.17549435e-38f;
  const float xs = subnormal ? x * 8388608.0f : x;
  const int32_t bits = detail::float_to_bits(xs);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126) - (subnormal ? 23.0f : 0.0f);
  float m = detail::bits_to_float((bits & 0x007fffff) | 0x3f000000);  // in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float p = 7.0376836292e-2f;
  p = p * m - 1.1514610310e-1f;
  p = p * m + 1.1676998740e-1f;
  p = p * m - 1.2420140846e-1f;
  p = p * m + 1.4249322787e-1f;
  p = p * m - 1.6668057665e-1f;
  p = p * m + 2.0000714765e-1f;
  p = p * m - 2.4999993993e-1f;
  p = p * m + 3.3333331174e-1f;
  float y = p * m * z;
  y = y - 2.12194440e-4f * e;
  y = y - 0.5f * z;
  y = m + y;
  y = y + 0.693359375f * e;
  y = x == 0.0f ? -INFINITY : y;
  y = x < 0.0f ? NAN : y;
  y = x == INFINITY ? INFINITY : y;
  y = (x != x) ? x : y;
  return y;
#endif
}

HAL_HOST_DEVICE double hal_log(double x) { return ::log(x); }

}  // namespace hal_ext
