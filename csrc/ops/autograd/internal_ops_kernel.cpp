// Autograd kernel of hal_ext's internal ops: the `_`-prefixed forwards that also return gradients or
// statistics, and the fused backwards. The public ops' autograd kernels call them below autograd, or
// in a backward without create_graph; under create_graph=True those backwards differentiate through
// ATen ops instead (differentiable_grads.h). The internal ops have no derivative of their own: called
// directly on inputs that require grad, their outputs get a node that raises, naming the op, when they
// are differentiated, instead of torch's fallback for ops without an autograd kernel (a warning, and
// no gradient).
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/util/Exception.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void run_below_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  at::AutoDispatchBelowADInplaceOrView guard;
  op.redispatchBoxed(keys & c10::after_ADInplaceOrView_keyset, stack);
}

class InternalOpFunction : public torch::autograd::Function<InternalOpFunction> {
 public:
  // The op's tensor arguments (what apply connects the outputs to) are on `stack`, where the op runs.
  static variable_list forward(AutogradContext* ctx, at::TensorList /*tensors*/, const c10::OperatorHandle* op,
                               c10::DispatchKeySet keys, torch::jit::Stack* stack) {
    ctx->saved_data["op"] = op->schema().operator_name().name;
    run_below_autograd(*op, keys, stack);
    variable_list outputs;
    for (const c10::IValue& value : torch::jit::last(*stack, op->schema().returns().size())) {
      outputs.push_back(value.toTensor());
      if (!at::isFloatingType(outputs.back().scalar_type())) ctx->mark_non_differentiable({outputs.back()});
    }
    return outputs;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list&) {
    TORCH_CHECK(false, ctx->saved_data["op"].toStringRef(),
                " is an internal op of hal_ext with no derivative: it cannot be differentiated, so the loss it "
                "computes cannot be differentiated twice this way. Differentiate the public op (hal_ext.alignment, "
                "hal_ext.keypoint_detection) with create_graph=True instead, whose gradient is differentiable.");
  }
};

void internal_op_autograd(const c10::OperatorHandle& op, c10::DispatchKeySet keys, torch::jit::Stack* stack) {
  variable_list tensors;
  bool requires_grad = false;
  for (const c10::IValue& value : torch::jit::last(*stack, op.schema().arguments().size())) {
    if (!value.isTensor()) continue;
    tensors.push_back(value.toTensor());
    requires_grad = requires_grad || tensors.back().requires_grad();
  }
  if (!requires_grad || !at::GradMode::is_enabled()) {
    run_below_autograd(op, keys, stack);
    return;
  }
  const size_t returns = op.schema().returns().size();
  variable_list outputs = InternalOpFunction::apply(at::TensorList(tensors), &op, keys, stack);
  torch::jit::drop(*stack, returns);
  for (auto& output : outputs) stack->emplace_back(std::move(output));
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  for (const char* name :
       {"_classifier_discrepancy_backward", "_classifier_discrepancy_with_grad", "_mcd_entropy_backward",
        "_shift_log_backward", "_classification_mdd_with_grad", "_classification_mdd_backward",
        "_regression_mdd_backward", "_joints_mse_loss_backward", "_joints_mse_loss_with_grad",
        "_joints_kl_loss_forward", "_joints_kl_loss_backward", "_joints_kl_loss_with_grad",
        "_regression_disparity_forward", "_regression_disparity_backward", "_regression_disparity_with_grad"}) {
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&internal_op_autograd>());
  }
}

}  // namespace hal_ext
