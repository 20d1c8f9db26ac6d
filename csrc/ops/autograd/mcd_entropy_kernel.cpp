// Autograd kernel of hal_ext::mcd_entropy: forward below autograd (it also returns the column means,
// a non-differentiable output), backward through hal_ext::_mcd_entropy_backward, which needs only the
// column means and the batch size (the predictions are not saved) and writes one gradient row. The row
// is returned expanded over the batch (a stride-0 view, like torch's sum backward); a leaf's .grad gets
// a contiguous copy from autograd's accumulation. Under create_graph=True the backward is the
// differentiable formula (differentiable_grads.h) on the predictions, kept by reference.
#include <ATen/core/grad_mode.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <vector>

#include "ops/autograd/differentiable_grads.h"
#include "ops/autograd/kept_inputs.h"
#include "ops/mcd_entropy.h"

namespace hal_ext {
namespace {

class McdEntropyFunction : public torch::autograd::Function<McdEntropyFunction> {
 public:
  static torch::autograd::variable_list forward(torch::autograd::AutogradContext* ctx, const at::Tensor& predictions,
                                               std::optional<at::ScalarType> out_dtype) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, means] = mcd_entropy(predictions, out_dtype);
    ctx->saved_data["dtype"] = predictions.scalar_type();  // the gradient's, whatever the loss's
    ctx->mark_non_differentiable({means});
    ctx->set_materialize_grads(false);  // the means never get a gradient: no zeros for them
    ctx->save_for_backward({means});
    ctx->saved_data["batch_size"] = predictions.sym_size(0);
    keep_inputs(ctx, {predictions});
    return {loss, means};
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 const torch::autograd::variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    if (!grad_outputs[0].defined()) return {at::Tensor(), at::Tensor()};  // not materialised: zero
    if (at::GradMode::is_enabled()) {                                      // create_graph=True
      const auto [predictions] = kept_inputs<1>(ctx, "hal_ext::mcd_entropy", {"predictions"});
      return {differentiable_grads::mcd_entropy(grad_outputs[0], predictions), at::Tensor()};
    }
    const c10::SymInt batch_size = ctx->saved_data["batch_size"].toSymInt();
    const at::Tensor row =
        _mcd_entropy_backward(grad_outputs[0], saved[0], batch_size, ctx->saved_data["dtype"].toScalarType());
    std::vector<c10::SymInt> sizes{batch_size};
    sizes.insert(sizes.end(), row.sym_sizes().begin(), row.sym_sizes().end());
    return {row.expand_symint(sizes), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> mcd_entropy_autograd(const at::Tensor& predictions,
                                                       std::optional<at::ScalarType> out_dtype) {
  auto outputs = McdEntropyFunction::apply(predictions, out_dtype);
  return {outputs[0], outputs[1]};
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("mcd_entropy", &mcd_entropy_autograd);
}

}  // namespace hal_ext
