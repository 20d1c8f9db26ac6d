// CPU kernels of hal_ext::regression_mdd (math and formula in mdd_math.h): elementwise l1/mse
// disparities of (y_adv - y) on both sides, margin, weights, and a deterministic ordered reduction.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_reduce.h"
#include "common/macros.h"
#include "common/reduction.h"
#include "ops/mdd.h"
#include "ops/mdd_math.h"

namespace hal_ext {
namespace {

namespace math = mdd_math;

at::Tensor regression_mdd_cpu(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                              const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                              const std::optional<at::Tensor>& w_t, double margin_d, int64_t loss_kind,
                              int64_t reduction) {
  mdd_detail::check_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, loss_kind, reduction);
  const Reduction red = to_reduction(reduction);
  const mdd_detail::RegressionInputs in = mdd_detail::prepare_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t);
  const int64_t n = in.y_s.numel();
  const int kind = static_cast<int>(loss_kind);
  at::Tensor out = red == Reduction::None ? at::empty(y_s.sizes(), y_s_adv.options()) : at::empty({}, y_s_adv.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_s_adv.scalar_type(), "regression_mdd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t margin = static_cast<acc_t>(margin_d);
    const scalar_t* ys = in.y_s.const_data_ptr<scalar_t>();
    const scalar_t* zs = in.y_s_adv.const_data_ptr<scalar_t>();
    const scalar_t* yt = in.y_t.const_data_ptr<scalar_t>();
    const scalar_t* zt = in.y_t_adv.const_data_ptr<scalar_t>();
    const scalar_t* ws = in.w_s.defined() ? in.w_s.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wt = in.w_t.defined() ? in.w_t.const_data_ptr<scalar_t>() : nullptr;
    auto term = [=](int64_t i) {
      const acc_t l_s = math::regression_term<acc_t>(static_cast<acc_t>(zs[i]) - static_cast<acc_t>(ys[i]), kind);
      const acc_t l_t = math::regression_term<acc_t>(static_cast<acc_t>(zt[i]) - static_cast<acc_t>(yt[i]), kind);
      return math::combine<acc_t>(margin, l_s, ws ? static_cast<acc_t>(ws[i]) : acc_t(1), l_t,
                                  wt ? static_cast<acc_t>(wt[i]) : acc_t(1));
    };
    if (red == Reduction::None) {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      parallel_chunks(n, [&](int64_t b, int64_t e) {
        HAL_SIMD
        for (int64_t i = b; i < e; ++i) o[i] = static_cast<scalar_t>(term(i));
      });
    } else {
      const double total = ordered_parallel_sum<double>(n, [&](int64_t b, int64_t e) {
        acc_t s = 0;
        HAL_SIMD_SUM(s)
        for (int64_t i = b; i < e; ++i) s += term(i);
        return static_cast<double>(s);
      });
      const double value = red == Reduction::Mean ? total / static_cast<double>(n) : total;
      *out.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(value);
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> regression_mdd_backward_cpu(
    const at::Tensor& grad, const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t,
    double margin_d, int64_t loss_kind, int64_t reduction) {
  mdd_detail::check_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, loss_kind, reduction);
  mdd_detail::check_reduced_grad(grad, reduction, y_s.sizes());
  check_same_device(y_s, "y_s", grad, "grad");
  const Reduction red = to_reduction(reduction);
  const mdd_detail::RegressionInputs in = mdd_detail::prepare_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t);
  const int64_t n = in.y_s.numel();
  const int kind = static_cast<int>(loss_kind);
  at::Tensor gs = at::empty(y_s_adv.sizes(), y_s_adv.options()), gt = at::empty(y_t_adv.sizes(), y_t_adv.options());
  if (n == 0) return {gs, gt};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_s_adv.scalar_type(), "regression_mdd_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t margin = static_cast<acc_t>(margin_d);
    const at::Tensor grad_acc = grad.to(at::toOpMathType(y_s_adv.scalar_type())).contiguous();
    const acc_t* g = grad_acc.const_data_ptr<acc_t>();
    const acc_t g_scalar = red == Reduction::None ? acc_t(0)
                           : red == Reduction::Mean ? g[0] / static_cast<acc_t>(n)
                                                    : g[0];
    const bool per_element = red == Reduction::None;
    const scalar_t* ys = in.y_s.const_data_ptr<scalar_t>();
    const scalar_t* zs = in.y_s_adv.const_data_ptr<scalar_t>();
    const scalar_t* yt = in.y_t.const_data_ptr<scalar_t>();
    const scalar_t* zt = in.y_t_adv.const_data_ptr<scalar_t>();
    const scalar_t* ws = in.w_s.defined() ? in.w_s.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* wt = in.w_t.defined() ? in.w_t.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* os = gs.mutable_data_ptr<scalar_t>();
    scalar_t* ot = gt.mutable_data_ptr<scalar_t>();
    parallel_chunks(n, [&](int64_t b, int64_t e) {
      HAL_SIMD
      for (int64_t i = b; i < e; ++i) {
        const acc_t gi = per_element ? g[i] : g_scalar;
        const acc_t a_s = (gi * (ws ? static_cast<acc_t>(ws[i]) : acc_t(1))) * -margin;
        const acc_t a_t = gi * (wt ? static_cast<acc_t>(wt[i]) : acc_t(1));
        os[i] = static_cast<scalar_t>(
            a_s * math::regression_grad<acc_t>(static_cast<acc_t>(zs[i]) - static_cast<acc_t>(ys[i]), kind));
        ot[i] = static_cast<scalar_t>(
            a_t * math::regression_grad<acc_t>(static_cast<acc_t>(zt[i]) - static_cast<acc_t>(yt[i]), kind));
      }
    });
  });
  return {gs, gt};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("regression_mdd", &regression_mdd_cpu);
  m.impl("_regression_mdd_backward", &regression_mdd_backward_cpu);
}

}  // namespace hal_ext
