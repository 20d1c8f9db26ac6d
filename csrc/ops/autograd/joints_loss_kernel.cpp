// Autograd kernels of hal_ext::joints_mse_loss and hal_ext::joints_kl_loss: forward below autograd,
// backward through the _backward ops. Only `output` receives a gradient (the Python front end routes a
// target or target_weight that requires grad to the reference composition). For a float/double output
// on the CPU the forward also writes the unit gradient while each row is in cache, and the backward
// only scales it (unit_grads.h). Under create_graph=True the backward is the differentiable formula
// (differentiable_grads.h) on the inputs.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/autograd/differentiable_grads.h"
#include "ops/autograd/kept_inputs.h"
#include "ops/autograd/unit_grads.h"
#include "ops/joints_loss.h"

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::optional<at::Tensor> optional_of(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

class JointsMSELossFunction : public torch::autograd::Function<JointsMSELossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& output, const at::Tensor& target,
                            const std::optional<at::Tensor>& target_weight, int64_t reduction,
                            std::optional<at::ScalarType> out_dtype, bool in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["in_forward"] = in_forward;
    ctx->saved_data["reduction"] = reduction;
    keep_inputs(ctx, {output, target, target_weight.value_or(at::Tensor())});
    if (in_forward) {
      auto [loss, unit_grad] = _joints_mse_loss_with_grad(output, target, target_weight, reduction, out_dtype);
      ctx->save_for_backward({unit_grad});
      return loss;
    }
    ctx->save_for_backward({output, target, target_weight.value_or(at::Tensor())});
    return joints_mse_loss(output, target, target_weight, reduction, out_dtype);
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    variable_list grads(6);  // output's gradient only
    if (at::GradMode::is_enabled()) {  // create_graph=True
      const auto [output, target, weight] =
          kept_inputs<3>(ctx, "hal_ext::joints_mse_loss", {"output", "target", "target_weight"});
      grads[0] = differentiable_grads::joints_mse_loss(grad, output, target, weight, reduction);
      return grads;
    }
    const auto saved = ctx->get_saved_variables();
    grads[0] = ctx->saved_data["in_forward"].toBool()
                   ? scale_unit_grad(saved[0], grad, heatmap_scale(grad, reduction))
                   : _joints_mse_loss_backward(grad, saved[0], saved[1], optional_of(saved[2]), reduction);
    return grads;
  }
};

class JointsKLLossFunction : public torch::autograd::Function<JointsKLLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& output, const at::Tensor& target,
                            const std::optional<at::Tensor>& target_weight, int64_t reduction, double epsilon,
                            std::optional<at::ScalarType> out_dtype, bool in_forward) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->saved_data["in_forward"] = in_forward;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["epsilon"] = epsilon;
    keep_inputs(ctx, {output, target, target_weight.value_or(at::Tensor())});
    if (in_forward) {
      auto [loss, unit_grad] = _joints_kl_loss_with_grad(output, target, target_weight, reduction, epsilon, out_dtype);
      ctx->save_for_backward({unit_grad});
      return loss;
    }
    auto [loss, stats] = _joints_kl_loss_forward(output, target, target_weight, reduction, epsilon, out_dtype);
    ctx->save_for_backward({output, target, target_weight.value_or(at::Tensor()), stats});
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const at::Tensor& grad = grad_outputs[0];
    const int64_t reduction = ctx->saved_data["reduction"].toInt();
    const double epsilon = ctx->saved_data["epsilon"].toDouble();
    variable_list grads(7);  // output's gradient only
    if (at::GradMode::is_enabled()) {  // create_graph=True
      const auto [output, target, weight] =
          kept_inputs<3>(ctx, "hal_ext::joints_kl_loss", {"output", "target", "target_weight"});
      grads[0] = differentiable_grads::joints_kl_loss(grad, output, target, weight, reduction, epsilon);
      return grads;
    }
    const auto saved = ctx->get_saved_variables();
    if (ctx->saved_data["in_forward"].toBool()) {
      grads[0] = scale_unit_grad(saved[0], grad, heatmap_scale(grad, reduction));
      return grads;
    }
    grads[0] = _joints_kl_loss_backward(grad, saved[0], saved[1], optional_of(saved[2]), saved[3], reduction, epsilon);
    return grads;
  }
};

at::Tensor joints_mse_loss_autograd(const at::Tensor& output, const at::Tensor& target,
                                    const std::optional<at::Tensor>& target_weight, int64_t reduction,
                                    std::optional<at::ScalarType> out_dtype) {
  const bool in_forward = unit_grads_in_forward(joints_loss::fused_grad_supported(output), output);
  return JointsMSELossFunction::apply(output, target, target_weight, reduction, out_dtype, in_forward);
}

at::Tensor joints_kl_loss_autograd(const at::Tensor& output, const at::Tensor& target,
                                   const std::optional<at::Tensor>& target_weight, int64_t reduction,
                                   double epsilon, std::optional<at::ScalarType> out_dtype) {
  const bool in_forward =
      unit_grads_in_forward(joints_loss::fused_grad_supported(output), output);
  return JointsKLLossFunction::apply(output, target, target_weight, reduction, epsilon, out_dtype, in_forward);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("joints_mse_loss", &joints_mse_loss_autograd);
  m.impl("joints_kl_loss", &joints_kl_loss_autograd);
}

}  // namespace hal_ext
