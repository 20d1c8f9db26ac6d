// Autograd kernel of hal_ext::classifier_discrepancy: forward below autograd, backward through
// hal_ext::_classifier_discrepancy_backward.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/classifier_discrepancy.h"

namespace hal_ext {
namespace {

class ClassifierDiscrepancyFunction : public torch::autograd::Function<ClassifierDiscrepancyFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& predictions1,
                            const at::Tensor& predictions2) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({predictions1, predictions2});
    return classifier_discrepancy(predictions1, predictions2);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    auto [g1, g2] = _classifier_discrepancy_backward(grad_outputs[0], saved[0], saved[1]);
    return {g1, g2};
  }
};

at::Tensor classifier_discrepancy_autograd(const at::Tensor& predictions1, const at::Tensor& predictions2) {
  return ClassifierDiscrepancyFunction::apply(predictions1, predictions2);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("classifier_discrepancy", &classifier_discrepancy_autograd);
}

}  // namespace hal_ext
