// Autograd kernels of hal_ext::classification_mdd and hal_ext::regression_mdd: forward below
// autograd, backward through the `_..._backward` ops. Gradients flow to y_s_adv and y_t_adv only
// (y_s and y_t get none, as in tllib where the argmax / y.detach() cut them off); the fused ops take
// constant weights (hal_ext's Python front end routes weights that require grad to the generic path).
// Under create_graph=True the backward is the differentiable formula (differentiable_grads.h) on the
// logits and weights (kept by reference) and the forward's argmaxes.
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <tuple>
#include <vector>

#include "ops/autograd/differentiable_grads.h"
#include "ops/autograd/kept_inputs.h"
#include "ops/autograd/unit_grads.h"
#include "ops/mdd.h"

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void check_constant_weight(const std::optional<at::Tensor>& w, const char* name) {
  TORCH_CHECK_VALUE(!w.has_value() || !w->defined() || !w->requires_grad(), name,
                    " must not require grad in the fused MDD op (use MarginDisparityDiscrepancy for learned weights)");
}

class ClassificationMddFunction : public torch::autograd::Function<ClassificationMddFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& y_s, const at::Tensor& y_s_adv,
                               const at::Tensor& y_t, const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                               const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
                               std::optional<at::ScalarType> out_dtype, bool in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor loss, stats, argmax;
    if (in_forward) {
      at::Tensor g_s, g_t;
      std::tie(loss, stats, argmax, g_s, g_t) =
          _classification_mdd_with_grad(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction);
      ctx->save_for_backward({g_s, g_t, argmax});
    } else {
      std::tie(loss, stats, argmax) =
          classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, out_dtype);
      ctx->save_for_backward({y_s_adv, y_t_adv, stats, argmax});
    }
    keep_inputs(ctx, {y_s_adv, y_t_adv, w_s.value_or(at::Tensor()), w_t.value_or(at::Tensor())});
    ctx->saved_data["in_forward"] = in_forward;
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["reduction"] = reduction;
    ctx->mark_non_differentiable({stats, argmax});
    ctx->set_materialize_grads(false);  // stats and argmax never get a gradient: no zeros for them
    return {loss, stats, argmax};
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor g_s, g_t;
    if (grad.defined()) {  // grads are not materialised: an undefined one means zero
      std::tie(g_s, g_t) = logit_grads(ctx, grad);
    }
    return {at::Tensor(), g_s, at::Tensor(), g_t, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor(), at::Tensor()};
  }

 private:
  static std::tuple<at::Tensor, at::Tensor> logit_grads(AutogradContext* ctx, const at::Tensor& grad) {
    const auto saved = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) return differentiable_logit_grads(ctx, grad, saved);  // create_graph=True
    if (!ctx->saved_data["in_forward"].toBool()) {
      return _classification_mdd_backward(grad, saved[0], saved[1], saved[2], saved[3],
                                          ctx->saved_data["reduction"].toInt());
    }
    // grad is 0-d, or per sample (N, d1..dk) for 'none': broadcast over the class dimension.
    return scale_unit_grads(saved[0], saved[1], grad, grad.dim() == 0 ? grad : grad.unsqueeze(1));
  }

  static std::tuple<at::Tensor, at::Tensor> differentiable_logit_grads(AutogradContext* ctx, const at::Tensor& grad,
                                                                       const variable_list& saved) {
    const auto [y_s_adv, y_t_adv, w_s, w_t] =
        kept_inputs<4>(ctx, "hal_ext::classification_mdd", {"y_s_adv", "y_t_adv", "w_s", "w_t"});
    const at::Tensor& argmax = ctx->saved_data["in_forward"].toBool() ? saved[2] : saved[3];  // (2, samples)
    std::vector<int64_t> sample_shape{y_s_adv.size(0)};
    sample_shape.insert(sample_shape.end(), y_s_adv.sizes().begin() + 2, y_s_adv.sizes().end());
    return differentiable_grads::classification_mdd(grad, y_s_adv, y_t_adv, argmax[0].view(sample_shape),
                                                    argmax[1].view(sample_shape), w_s, w_t,
                                                    ctx->saved_data["margin"].toDouble(),
                                                    ctx->saved_data["reduction"].toInt());
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd_autograd(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
    std::optional<at::ScalarType> out_dtype) {
  check_constant_weight(w_s, "w_s");
  check_constant_weight(w_t, "w_t");
  // (N, C) float/double logits on the CPU: the forward keeps its exponentials as the unit gradients
  // instead of the backward recomputing them (exp dominates the CPU cost). Their loss has their dtype.
  const bool in_forward = unit_grads_in_forward(mdd_detail::fused_grad_supported(y_s_adv) && !out_dtype.has_value(),
                                                y_s_adv, y_t_adv);
  auto out = ClassificationMddFunction::apply(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction, out_dtype,
                                              in_forward);
  return {out[0], out[1], out[2]};
}

class RegressionMddFunction : public torch::autograd::Function<RegressionMddFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y_s, const at::Tensor& y_s_adv,
                            const at::Tensor& y_t, const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                            const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind,
                            int64_t reduction, std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({y_s, y_s_adv, y_t, y_t_adv, w_s.value_or(at::Tensor()), w_t.value_or(at::Tensor())});
    ctx->saved_data["margin"] = margin;
    ctx->saved_data["loss_kind"] = loss_kind;
    ctx->saved_data["reduction"] = reduction;
    return regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction, out_dtype);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto s = ctx->get_saved_variables();
    if (at::GradMode::is_enabled()) {  // create_graph=True
      auto [g_s, g_t] = differentiable_grads::regression_mdd(
          grad_outputs[0], s[0], s[1], s[2], s[3], s[4], s[5], ctx->saved_data["margin"].toDouble(),
          ctx->saved_data["loss_kind"].toInt(), ctx->saved_data["reduction"].toInt());
      return {at::Tensor(), g_s, at::Tensor(), g_t, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
              at::Tensor(), at::Tensor()};
    }
    auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    auto [g_s, g_t] = _regression_mdd_backward(grad_outputs[0], s[0], s[1], s[2], s[3], opt(s[4]), opt(s[5]),
                                               ctx->saved_data["margin"].toDouble(),
                                               ctx->saved_data["loss_kind"].toInt(),
                                               ctx->saved_data["reduction"].toInt());
    return {at::Tensor(), g_s,          at::Tensor(), g_t,          at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor regression_mdd_autograd(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                   const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                   const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind,
                                   int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  check_constant_weight(w_s, "w_s");
  check_constant_weight(w_t, "w_t");
  return RegressionMddFunction::apply(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("classification_mdd", &classification_mdd_autograd);
  m.impl("regression_mdd", &regression_mdd_autograd);
}

}  // namespace hal_ext
