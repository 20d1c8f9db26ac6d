// Autograd kernel of hal_ext::classifier_discrepancy: forward below autograd. For float/double
// predictions on the CPU (cd_detail::fused_grad_supported) the forward also writes the unit gradients
// in its one pass over the predictions, and the backward only scales them (unit_grads.h); elsewhere
// the backward is hal_ext::_classifier_discrepancy_backward on the saved predictions. Under
// create_graph=True the backward is the differentiable formula (differentiable_grads.h) on the
// predictions, kept by reference.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/autograd/differentiable_grads.h"
#include "ops/autograd/kept_inputs.h"
#include "ops/autograd/unit_grads.h"
#include "ops/classifier_discrepancy.h"

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class ClassifierDiscrepancyFunction : public torch::autograd::Function<ClassifierDiscrepancyFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& predictions1, const at::Tensor& predictions2,
                            bool in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["in_forward"] = in_forward;
    keep_inputs(ctx, {predictions1, predictions2});
    if (!in_forward) {
      ctx->save_for_backward({predictions1, predictions2});
      return classifier_discrepancy(predictions1, predictions2);
    }
    auto [loss, g1, g2] = _classifier_discrepancy_with_grad(predictions1, predictions2);
    ctx->save_for_backward({g1, g2});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    if (at::GradMode::is_enabled()) {  // create_graph=True
      const auto [p1, p2] =
          kept_inputs<2>(ctx, "hal_ext::classifier_discrepancy", {"predictions1", "predictions2"});
      auto [g1, g2] = differentiable_grads::classifier_discrepancy(grad, p1, p2);
      return {g1, g2, at::Tensor()};
    }
    const auto saved = ctx->get_saved_variables();
    auto [g1, g2] = ctx->saved_data["in_forward"].toBool() ? scale_unit_grads(saved[0], saved[1], grad, grad)
                                                          : _classifier_discrepancy_backward(grad, saved[0], saved[1]);
    return {g1, g2, at::Tensor()};
  }
};

at::Tensor classifier_discrepancy_autograd(const at::Tensor& predictions1, const at::Tensor& predictions2) {
  const bool in_forward =
      unit_grads_in_forward(cd_detail::fused_grad_supported(predictions1), predictions1, predictions2);
  return ClassifierDiscrepancyFunction::apply(predictions1, predictions2, in_forward);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("classifier_discrepancy", &classifier_discrepancy_autograd);
}

}  // namespace hal_ext
