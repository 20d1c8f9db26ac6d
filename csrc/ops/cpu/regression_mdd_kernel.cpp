// CPU kernels of hal_ext::regression_mdd (math and formula in mdd_math.h): elementwise l1/mse
// disparities of (y_adv - y) on both sides, margin, weights, and a deterministic ordered reduction.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <type_traits>
#include <utility>

#include "common/checks.h"
#include "common/cpu_reduce.h"
#include "common/loss_dtype.h"
#include "common/macros.h"
#include "common/reduction.h"
#include "ops/mdd.h"
#include "ops/mdd_math.h"

namespace hal_ext {
namespace {

namespace math = mdd_math;

// The side's element pointers (weights may be null: weight 1).
template <typename scalar_t>
struct Side {
  const scalar_t* y;
  const scalar_t* z;  // y_adv
  const scalar_t* w;
};

// The loops live in plain functions with the pointers as arguments (inside the lambdas that
// at::parallel_for runs in an OpenMP region GCC leaves loops over captured pointers scalar). The loss
// kind, whether weights are read and whether the incoming gradient is per element are template
// arguments: a runtime test inside a loop keeps GCC from vectorising it.
template <bool kWeighted, typename acc_t, typename scalar_t>
inline acc_t weight_at(const scalar_t* w, int64_t i) {
  if constexpr (kWeighted) {
    return w ? static_cast<acc_t>(w[i]) : acc_t(1);
  } else {
    return acc_t(1);
  }
}

template <int kKind, bool kWeighted, typename scalar_t, typename acc_t>
inline acc_t element_loss(Side<scalar_t> s, Side<scalar_t> t, acc_t margin, int64_t i) {
  const acc_t l_s = math::regression_term<acc_t>(static_cast<acc_t>(s.z[i]) - static_cast<acc_t>(s.y[i]), kKind);
  const acc_t l_t = math::regression_term<acc_t>(static_cast<acc_t>(t.z[i]) - static_cast<acc_t>(t.y[i]), kKind);
  return math::combine<acc_t>(margin, l_s, weight_at<kWeighted, acc_t>(s.w, i), l_t,
                              weight_at<kWeighted, acc_t>(t.w, i));
}

template <int kKind, bool kWeighted, typename scalar_t, typename acc_t, typename out_t>
void losses_range(Side<scalar_t> s, Side<scalar_t> t, acc_t margin, out_t* out, int64_t begin, int64_t end) {
  HAL_SIMD
  for (int64_t i = begin; i < end; ++i) {
    out[i] = static_cast<out_t>(element_loss<kKind, kWeighted>(s, t, margin, i));
  }
}

template <int kKind, bool kWeighted, typename scalar_t, typename acc_t>
acc_t loss_sum_range(Side<scalar_t> s, Side<scalar_t> t, acc_t margin, int64_t begin, int64_t end) {
  acc_t sum = 0;
  HAL_SIMD_SUM(sum)
  for (int64_t i = begin; i < end; ++i) sum += element_loss<kKind, kWeighted>(s, t, margin, i);
  return sum;
}

// kPerElement: g holds one incoming gradient per element (reduction 'none'); else g_scalar for all.
template <int kKind, bool kWeighted, bool kPerElement, typename scalar_t, typename acc_t>
void grads_range(Side<scalar_t> s, Side<scalar_t> t, acc_t margin, const acc_t* g, acc_t g_scalar, scalar_t* os,
                 scalar_t* ot, int64_t begin, int64_t end) {
  HAL_SIMD
  for (int64_t i = begin; i < end; ++i) {
    acc_t gi = g_scalar;
    if constexpr (kPerElement) gi = g[i];
    const acc_t a_s = (gi * weight_at<kWeighted, acc_t>(s.w, i)) * -margin;
    const acc_t a_t = gi * weight_at<kWeighted, acc_t>(t.w, i);
    os[i] = static_cast<scalar_t>(
        a_s * math::regression_grad<acc_t>(static_cast<acc_t>(s.z[i]) - static_cast<acc_t>(s.y[i]), kKind));
    ot[i] = static_cast<scalar_t>(
        a_t * math::regression_grad<acc_t>(static_cast<acc_t>(t.z[i]) - static_cast<acc_t>(t.y[i]), kKind));
  }
}

template <typename scalar_t>
std::pair<Side<scalar_t>, Side<scalar_t>> sides(const mdd_detail::RegressionInputs& in) {
  auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
  return {{ptr(in.y_s), ptr(in.y_s_adv), ptr(in.w_s)}, {ptr(in.y_t), ptr(in.y_t_adv), ptr(in.w_t)}};
}

// Calls body(kind, weighted) with the runtime loss kind and weight flag as std::integral_constants.
template <typename Body>
void with_variant(int kind, bool weighted, const Body& body) {
  auto with_kind = [&](auto k) {
    if (weighted) {
      body(k, std::true_type());
    } else {
      body(k, std::false_type());
    }
  };
  if (kind == 0) {
    with_kind(std::integral_constant<int, 0>());
  } else {
    with_kind(std::integral_constant<int, 1>());
  }
}

at::Tensor regression_mdd_cpu(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                              const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                              const std::optional<at::Tensor>& w_t, double margin_d, int64_t loss_kind,
                              int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  mdd_detail::check_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, loss_kind, reduction);
  const Reduction red = to_reduction(reduction);
  const mdd_detail::RegressionInputs in = mdd_detail::prepare_regression(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t);
  const int64_t n = in.y_s.numel();
  const auto loss_options = y_s_adv.options().dtype(result_dtype(out_dtype, y_s_adv.scalar_type()));
  at::Tensor out = red == Reduction::None ? at::empty(y_s.sizes(), loss_options) : at::empty({}, loss_options);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y_s_adv.scalar_type(), "regression_mdd_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t margin = static_cast<acc_t>(margin_d);
    const auto [s, t] = sides<scalar_t>(in);
    const bool weighted = s.w || t.w;
    with_variant(static_cast<int>(loss_kind), weighted, [&](auto kind, auto w) {
      constexpr int kKind = decltype(kind)::value;
      constexpr bool kWeighted = decltype(w)::value;
      with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
        using out_t = typename decltype(tag)::type;
        if (red == Reduction::None) {
          out_t* o = out.mutable_data_ptr<out_t>();
          parallel_chunks(n, [&](int64_t b, int64_t e) { losses_range<kKind, kWeighted>(s, t, margin, o, b, e); });
        } else {
          const double total = ordered_parallel_sum<double>(n, [&](int64_t b, int64_t e) {
            return static_cast<double>(loss_sum_range<kKind, kWeighted>(s, t, margin, b, e));
          });
          const double value = red == Reduction::Mean ? total / static_cast<double>(n) : total;
          *out.mutable_data_ptr<out_t>() = static_cast<out_t>(value);
        }
      });
    });
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
    const auto [s, t] = sides<scalar_t>(in);
    scalar_t* os = gs.mutable_data_ptr<scalar_t>();
    scalar_t* ot = gt.mutable_data_ptr<scalar_t>();
    with_variant(static_cast<int>(loss_kind), s.w || t.w, [&](auto kind, auto w) {
      constexpr int kKind = decltype(kind)::value;
      constexpr bool kWeighted = decltype(w)::value;
      parallel_chunks(n, [&](int64_t b, int64_t e) {
        if (red == Reduction::None) {
          grads_range<kKind, kWeighted, true>(s, t, margin, g, g_scalar, os, ot, b, e);
        } else {
          grads_range<kKind, kWeighted, false>(s, t, margin, g, g_scalar, os, ot, b, e);
        }
      });
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
