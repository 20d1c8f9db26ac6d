// CPU kernels of hal_ext::classifier_discrepancy (math in classifier_discrepancy_math.h). The forward
// with gradient (float/double) sums |p1 - p2| and writes the unit gradients sign(p1 - p2) / n in the
// same pass, so the backward need not read the predictions again.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_reduce.h"
#include "common/macros.h"
#include "ops/classifier_discrepancy.h"
#include "ops/classifier_discrepancy_math.h"

namespace hal_ext {
namespace {

namespace math = classifier_discrepancy_math;

// The loops live in plain functions (pointers as arguments): inside the lambdas that
// at::parallel_for runs in an OpenMP region, GCC reads the captured pointers through the closure
// and leaves the loops scalar.
template <typename scalar_t, typename acc_t>
acc_t abs_diff_sum(const scalar_t* a, const scalar_t* b, int64_t begin, int64_t end) {
  acc_t s = 0;
  HAL_SIMD_SUM(s)
  for (int64_t i = begin; i < end; ++i) s += math::term<acc_t>(a[i], b[i]);
  return s;
}

template <typename scalar_t, typename acc_t>
void sign_grads(const scalar_t* a, const scalar_t* b, scalar_t* o1, scalar_t* o2, int64_t begin, int64_t end,
                acc_t g_over_n) {
  HAL_SIMD
  for (int64_t i = begin; i < end; ++i) {
    const acc_t d = math::grad<acc_t>(a[i], b[i], g_over_n);
    o1[i] = static_cast<scalar_t>(d);
    o2[i] = static_cast<scalar_t>(-d);
  }
}

// abs_diff_sum that also writes the unit gradients (inv_n = 1 / n) of [begin, end).
template <typename scalar_t>
scalar_t abs_diff_sum_and_grads(const scalar_t* a, const scalar_t* b, scalar_t* o1, scalar_t* o2, int64_t begin,
                                int64_t end, scalar_t inv_n) {
  scalar_t s = 0;
  HAL_SIMD_SUM(s)
  for (int64_t i = begin; i < end; ++i) {
    s += math::term<scalar_t>(a[i], b[i]);
    const scalar_t d = math::grad<scalar_t>(a[i], b[i], inv_n);
    o1[i] = d;
    o2[i] = -d;
  }
  return s;
}

at::Tensor classifier_discrepancy_cpu(const at::Tensor& predictions1, const at::Tensor& predictions2) {
  check_float_tensor(predictions1, "predictions1");
  check_paired(predictions1, "predictions1", predictions2, "predictions2");
  const at::Tensor p1 = predictions1.contiguous(), p2 = predictions2.contiguous();
  const int64_t n = p1.numel();
  at::Tensor out = at::empty({}, p1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p1.scalar_type(), "classifier_discrepancy_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* a = p1.const_data_ptr<scalar_t>();
    const scalar_t* b = p2.const_data_ptr<scalar_t>();
    const acc_t total = ordered_parallel_sum<acc_t>(
        n, [&](int64_t begin, int64_t end) { return abs_diff_sum<scalar_t, acc_t>(a, b, begin, end); });
    *out.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(total / static_cast<acc_t>(n));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> classifier_discrepancy_backward_cpu(const at::Tensor& grad,
                                                                        const at::Tensor& predictions1,
                                                                        const at::Tensor& predictions2) {
  check_scalar_grad(grad);
  check_float_tensor(predictions1, "predictions1");
  check_paired(predictions1, "predictions1", predictions2, "predictions2");
  const at::Tensor p1 = predictions1.contiguous(), p2 = predictions2.contiguous();
  const int64_t n = p1.numel();
  at::Tensor g1 = at::empty_like(p1), g2 = at::empty_like(p2);
  const at::Tensor g = grad.to(p1.scalar_type());  // itself for autograd's grads
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p1.scalar_type(), "classifier_discrepancy_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t g_over_n = static_cast<acc_t>(*g.const_data_ptr<scalar_t>()) / static_cast<acc_t>(n);
    const scalar_t* a = p1.const_data_ptr<scalar_t>();
    const scalar_t* b = p2.const_data_ptr<scalar_t>();
    scalar_t* o1 = g1.mutable_data_ptr<scalar_t>();
    scalar_t* o2 = g2.mutable_data_ptr<scalar_t>();
    parallel_chunks(n, [&](int64_t begin, int64_t end) {
      sign_grads<scalar_t, acc_t>(a, b, o1, o2, begin, end, g_over_n);
    });
  });
  return {g1, g2};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_discrepancy_with_grad_cpu(const at::Tensor& predictions1,
                                                                                   const at::Tensor& predictions2) {
  check_float_tensor(predictions1, "predictions1");
  check_paired(predictions1, "predictions1", predictions2, "predictions2");
  if (!cd_detail::fused_grad_supported(predictions1)) {  // half types
    return cd_detail::classifier_discrepancy_with_grad_composite(predictions1, predictions2);
  }
  const at::Tensor p1 = predictions1.contiguous(), p2 = predictions2.contiguous();
  const int64_t n = p1.numel();
  at::Tensor out = at::empty({}, p1.options());
  at::Tensor g1 = at::empty_like(p1), g2 = at::empty_like(p2);
  AT_DISPATCH_FLOATING_TYPES(p1.scalar_type(), "classifier_discrepancy_with_grad_cpu", [&] {
    const scalar_t* a = p1.const_data_ptr<scalar_t>();
    const scalar_t* b = p2.const_data_ptr<scalar_t>();
    scalar_t* o1 = g1.mutable_data_ptr<scalar_t>();
    scalar_t* o2 = g2.mutable_data_ptr<scalar_t>();
    const scalar_t inv_n = scalar_t(1) / static_cast<scalar_t>(n);
    const scalar_t total = ordered_parallel_sum<scalar_t>(n, [&](int64_t begin, int64_t end) {
      return abs_diff_sum_and_grads<scalar_t>(a, b, o1, o2, begin, end, inv_n);
    });
    *out.mutable_data_ptr<scalar_t>() = total / static_cast<scalar_t>(n);
  });
  return {out, g1, g2};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("classifier_discrepancy", &classifier_discrepancy_cpu);
  m.impl("_classifier_discrepancy_backward", &classifier_discrepancy_backward_cpu);
  m.impl("_classifier_discrepancy_with_grad", &classifier_discrepancy_with_grad_cpu);
}

}  // namespace hal_ext
