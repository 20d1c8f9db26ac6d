// Autograd kernel of hal_ext::regression_disparity. For float/double y_adv on the CPU the forward also
// writes grad_y_adv for a unit incoming gradient, and the backward only scales it (unit_grads.h).
// Elsewhere the forward saves only y_adv, the weight, the peaks (B, K, 2) and the KL row statistics, and
// the backward rebuilds the targets and writes grad_y_adv. y (the pseudo labels' source) and the weight
// receive no gradient. Under create_graph=True the backward builds the pseudo labels from y (the inputs
// are kept by reference) and returns the keypoint loss's differentiable gradient (differentiable_grads.h).
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/autograd/differentiable_grads.h"
#include "ops/autograd/kept_inputs.h"
#include "ops/autograd/unit_grads.h"
#include "ops/pseudo_label.h"
#include "ops/regression_disparity.h"

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RegressionDisparityFunction : public torch::autograd::Function<RegressionDisparityFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& y_adv,
                            const std::optional<at::Tensor>& weight, int64_t mode, double sigma, int64_t generator,
                            int64_t criterion, int64_t reduction, double epsilon, bool in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    keep_inputs(ctx, {y, y_adv, weight.value_or(at::Tensor())});
    ctx->saved_data["in_forward"] = in_forward;
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["sigma"] = sigma;
    ctx->saved_data["generator"] = generator;
    ctx->saved_data["criterion"] = criterion;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["epsilon"] = epsilon;
    if (in_forward) {
      auto [loss, unit_grad] =
          _regression_disparity_with_grad(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
      ctx->save_for_backward({unit_grad});
      return loss;
    }
    auto [loss, peaks, stats] =
        _regression_disparity_forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
    ctx->save_for_backward({y_adv, weight.value_or(at::Tensor()), peaks, stats});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const auto& d = ctx->saved_data;
    variable_list grads(10);  // y_adv's gradient only
    if (at::GradMode::is_enabled()) {  // create_graph=True
      grads[1] = differentiable_grad(ctx, grad);
      return grads;
    }
    const auto saved = ctx->get_saved_variables();
    if (d.at("in_forward").toBool()) {
      grads[1] = scale_unit_grad(saved[0], grad, heatmap_scale(grad, d.at("reduction").toInt()));
      return grads;
    }
    std::optional<at::Tensor> weight = saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    grads[1] = _regression_disparity_backward(grad, saved[0], weight, saved[2], saved[3], d.at("mode").toInt(),
                                              d.at("sigma").toDouble(), d.at("generator").toInt(),
                                              d.at("criterion").toInt(), d.at("reduction").toInt(),
                                              d.at("epsilon").toDouble());
    return grads;
  }

 private:
  // create_graph=True: the criterion's differentiable gradient against the pseudo-label map of the mode.
  static at::Tensor differentiable_grad(AutogradContext* ctx, const at::Tensor& grad) {
    const auto& d = ctx->saved_data;
    const auto [y, y_adv, weight] = kept_inputs<3>(ctx, "hal_ext::regression_disparity", {"y", "y_adv", "weight"});
    const double sigma = d.at("sigma").toDouble();
    auto [ground_truth, ground_false] = d.at("generator").toInt() == 1 ? fast_pseudo_label_2d(y, sigma)
                                                                        : pseudo_label_2d(y, sigma);
    // float32 maps, in float64 against float64 logits (the type promotion of tllib's criterion)
    const at::Tensor target = (d.at("mode").toInt() == 1 ? ground_false : ground_truth)
                                  .to(y_adv.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
    const int64_t reduction = d.at("reduction").toInt();
    if (d.at("criterion").toInt() == 1) {
      return differentiable_grads::joints_kl_loss(grad, y_adv, target, weight, reduction, d.at("epsilon").toDouble());
    }
    return differentiable_grads::joints_mse_loss(grad, y_adv, target, weight, reduction);
  }
};

at::Tensor regression_disparity_autograd(const at::Tensor& y, const at::Tensor& y_adv,
                                         const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                                         int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  const bool in_forward = unit_grads_in_forward(regression_disparity_detail::fused_grad_supported(y_adv), y_adv);
  return RegressionDisparityFunction::apply(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon,
                                            in_forward);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("regression_disparity", &regression_disparity_autograd);
}

}  // namespace hal_ext
