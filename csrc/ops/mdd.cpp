// Schemas, dispatcher entry points and shared argument checks of hal_ext::classification_mdd and
// hal_ext::regression_mdd (MDD, SPEC "MDD"; the math is in mdd_math.h).
#include "mdd.h"

#include <ATen/ExpandUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/ones_like.h>
#include <torch/library.h>

#include <limits>

#include "common/checks.h"
#include "common/index_checks.h"
#include "common/reduction.h"
#include "ops/mdd_math.h"

namespace hal_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
    std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::classification_mdd", "")
                       .typed<decltype(classification_mdd)>();
  return op.call(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, out_dtype);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> _classification_mdd_with_grad(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_classification_mdd_with_grad", "")
                       .typed<decltype(_classification_mdd_with_grad)>();
  return op.call(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction);
}

std::tuple<at::Tensor, at::Tensor> _classification_mdd_backward(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                                const at::Tensor& y_t_adv, const at::Tensor& stats,
                                                                const at::Tensor& argmax, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_classification_mdd_backward", "")
                       .typed<decltype(_classification_mdd_backward)>();
  return op.call(grad, y_s_adv, y_t_adv, stats, argmax, reduction);
}

at::Tensor regression_mdd(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                          const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                          const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind, int64_t reduction,
                          std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::regression_mdd", "")
                       .typed<decltype(regression_mdd)>();
  return op.call(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction, out_dtype);
}

std::tuple<at::Tensor, at::Tensor> _regression_mdd_backward(
    const at::Tensor& grad, const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t,
    double margin, int64_t loss_kind, int64_t reduction) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_regression_mdd_backward", "")
                       .typed<decltype(_regression_mdd_backward)>();
  return op.call(grad, y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction);
}

namespace mdd_detail {
namespace {

void check_four(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv) {
  check_float_tensor(y_s, "y_s");
  check_paired(y_s, "y_s", y_s_adv, "y_s_adv");
  check_paired(y_s, "y_s", y_t, "y_t");
  check_paired(y_s, "y_s", y_t_adv, "y_t_adv");
}

void check_weight(const std::optional<at::Tensor>& w, const char* name, const at::Tensor& like,
                  at::IntArrayRef shape) {
  if (!w.has_value() || !w->defined()) return;
  check_float_tensor(*w, name);
  check_same_device(like, "the logits", *w, name);
  TORCH_CHECK_VALUE(at::is_expandable_to(w->sizes(), shape), name, " must broadcast to the per-sample loss shape ",
                    shape, ", got shape ", w->sizes());
}

}  // namespace

ClassificationGeometry check_classification(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                            const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                            const std::optional<at::Tensor>& w_t, int64_t reduction) {
  to_reduction(reduction);
  check_four(y_s, y_s_adv, y_t, y_t_adv);
  TORCH_CHECK_VALUE(y_s.dim() >= 2, "y_s must have at least 2 dimensions (N, C) or (N, C, d1, ..., dk), got shape ",
                    y_s.sizes());
  ClassificationGeometry g;
  g.n = y_s.size(0);
  g.c = y_s.size(1);
  TORCH_CHECK_VALUE(g.c > 0, "y_s must have at least one class (dimension 1), got shape ", y_s.sizes());
  TORCH_CHECK_VALUE(g.c < std::numeric_limits<int32_t>::max(), "y_s has too many classes: ", g.c);
  g.sample_shape.push_back(g.n);
  for (int64_t i = 2; i < y_s.dim(); ++i) {
    g.d *= y_s.size(i);
    g.sample_shape.push_back(y_s.size(i));
  }
  g.m = g.n * g.d;
  check_weight(w_s, "w_s", y_s, g.sample_shape);
  check_weight(w_t, "w_t", y_s, g.sample_shape);
  return g;
}

void check_regression(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                      const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                      const std::optional<at::Tensor>& w_t, int64_t loss_kind, int64_t reduction) {
  to_reduction(reduction);
  TORCH_CHECK_VALUE(loss_kind == 0 || loss_kind == 1, "loss_kind must be 0 (l1) or 1 (mse), got ", loss_kind);
  check_four(y_s, y_s_adv, y_t, y_t_adv);
  check_weight(w_s, "w_s", y_s, y_s.sizes());
  check_weight(w_t, "w_t", y_s, y_s.sizes());
}

at::Tensor expand_weight(const std::optional<at::Tensor>& w, at::IntArrayRef shape, const at::Tensor& like) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  return w->to(like.scalar_type()).expand(shape).contiguous();
}

RegressionInputs prepare_regression(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                    const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                    const std::optional<at::Tensor>& w_t) {
  return {y_s.contiguous(),     y_s_adv.contiguous(),
          y_t.contiguous(),     y_t_adv.contiguous(),
          expand_weight(w_s, y_s.sizes(), y_s_adv), expand_weight(w_t, y_s.sizes(), y_s_adv)};
}

bool fused_grad_supported(const at::Tensor& y_adv) {
  const auto dtype = y_adv.scalar_type();
  return y_adv.dim() == 2 && (dtype == at::kFloat || dtype == at::kDouble);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> classification_mdd_with_grad_composite(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction) {
  auto [loss, stats, argmax] = classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction);
  auto [g_s, g_t] = _classification_mdd_backward(at::ones_like(loss), y_s_adv, y_t_adv, stats, argmax, reduction);
  return {loss, stats, argmax, g_s, g_t};
}

void check_reduced_grad(const at::Tensor& grad, int64_t reduction, at::IntArrayRef sample_shape) {
  if (to_reduction(reduction) == Reduction::None) {
    TORCH_CHECK_VALUE(grad.sizes() == sample_shape, "grad must have the per-sample loss shape ", sample_shape,
                      ", got ", grad.sizes());
  } else {
    check_scalar_grad(grad);
  }
}

ClassificationGeometry check_classification_backward(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                     const at::Tensor& y_t_adv, const at::Tensor& stats,
                                                     const at::Tensor& argmax, int64_t reduction) {
  check_float_tensor(y_s_adv, "y_s_adv");
  check_paired(y_s_adv, "y_s_adv", y_t_adv, "y_t_adv");
  TORCH_CHECK_VALUE(y_s_adv.dim() >= 2, "y_s_adv must have at least 2 dimensions, got shape ", y_s_adv.sizes());
  ClassificationGeometry geo;
  geo.n = y_s_adv.size(0);
  geo.c = y_s_adv.size(1);
  geo.sample_shape = {geo.n};
  for (int64_t i = 2; i < y_s_adv.dim(); ++i) {
    geo.d *= y_s_adv.size(i);
    geo.sample_shape.push_back(y_s_adv.size(i));
  }
  geo.m = geo.n * geo.d;
  check_reduced_grad(grad, reduction, geo.sample_shape);
  const auto acc_dtype = at::toOpMathType(y_s_adv.scalar_type());
  TORCH_CHECK_VALUE(stats.dim() == 2 && stats.size(0) == mdd_math::kStats && stats.size(1) == geo.m,
                    "stats must have shape (", mdd_math::kStats, ", ", geo.m, "), got ", stats.sizes());
  TORCH_CHECK_TYPE(stats.scalar_type() == acc_dtype, "stats must have dtype ", acc_dtype, ", got ",
                   stats.scalar_type());
  TORCH_CHECK_VALUE(argmax.dim() == 2 && argmax.size(0) == 2 && argmax.size(1) == geo.m,
                    "argmax must have shape (2, ", geo.m, "), got ", argmax.sizes());
  TORCH_CHECK_TYPE(argmax.scalar_type() == at::kLong, "argmax must be an int64 tensor, got ", argmax.scalar_type());
  check_same_device(y_s_adv, "y_s_adv", grad, "grad");
  check_same_device(y_s_adv, "y_s_adv", stats, "stats");
  check_same_device(y_s_adv, "y_s_adv", argmax, "argmax");
  check_index_range(argmax, "argmax", geo.c);
  return geo;
}

}  // namespace mdd_detail

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("classification_mdd(Tensor y_s, Tensor y_s_adv, Tensor y_t, Tensor y_t_adv, Tensor? w_s, Tensor? w_t, "
        "float margin, int reduction, ScalarType? out_dtype=None) -> (Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_classification_mdd_with_grad(Tensor y_s, Tensor y_s_adv, Tensor y_t, Tensor y_t_adv, Tensor? w_s, "
        "Tensor? w_t, float margin, int reduction) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_classification_mdd_backward(Tensor grad, Tensor y_s_adv, Tensor y_t_adv, Tensor stats, Tensor argmax, "
        "int reduction) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("regression_mdd(Tensor y_s, Tensor y_s_adv, Tensor y_t, Tensor y_t_adv, Tensor? w_s, Tensor? w_t, "
        "float margin, int loss_kind, int reduction, ScalarType? out_dtype=None) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_regression_mdd_backward(Tensor grad, Tensor y_s, Tensor y_s_adv, Tensor y_t, Tensor y_t_adv, Tensor? w_s, "
        "Tensor? w_t, float margin, int loss_kind, int reduction) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(hal_ext, CompositeExplicitAutograd, m) {
  m.impl("_classification_mdd_with_grad", &mdd_detail::classification_mdd_with_grad_composite);
}

}  // namespace hal_ext
