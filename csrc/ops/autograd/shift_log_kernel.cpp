// Autograd kernel of hal_ext::shift_log: forward below autograd, backward through
// hal_ext::_shift_log_backward (offset gets no gradient), or under create_graph=True the
// differentiable formula (differentiable_grads.h).
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/autograd/differentiable_grads.h"
#include "ops/shift_log.h"

namespace hal_ext {
namespace {

class ShiftLogFunction : public torch::autograd::Function<ShiftLogFunction> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& x, double offset,
                            std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({x});
    ctx->saved_data["offset"] = offset;
    return shift_log(x, offset, out_dtype);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const double offset = ctx->saved_data["offset"].toDouble();
    if (at::GradMode::is_enabled()) {  // create_graph=True
      return {differentiable_grads::shift_log(grad_outputs[0], saved[0], offset), at::Tensor(), at::Tensor()};
    }
    return {_shift_log_backward(grad_outputs[0], saved[0], offset), at::Tensor(), at::Tensor()};
  }
};

at::Tensor shift_log_autograd(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype) {
  return ShiftLogFunction::apply(x, offset, out_dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("shift_log", &shift_log_autograd);
}

}  // namespace hal_ext
