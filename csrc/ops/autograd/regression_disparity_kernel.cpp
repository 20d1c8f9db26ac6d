// Autograd kernel of hal_ext::regression_disparity: the forward saves only y_adv, the weight, the
// peaks (B, K, 2) and the KL row statistics; the backward rebuilds the targets and writes grad_y_adv.
// y (the pseudo labels' source) and the weight receive no gradient.
#include <torch/autograd.h>
#include <torch/library.h>

#include "ops/regression_disparity.h"

namespace hal_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class RegressionDisparityFunction : public torch::autograd::Function<RegressionDisparityFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& y, const at::Tensor& y_adv,
                            const std::optional<at::Tensor>& weight, int64_t mode, double sigma, int64_t generator,
                            int64_t criterion, int64_t reduction, double epsilon) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, peaks, stats] =
        _regression_disparity_forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
    ctx->save_for_backward({y_adv, weight.value_or(at::Tensor()), peaks, stats});
    ctx->saved_data["mode"] = mode;
    ctx->saved_data["sigma"] = sigma;
    ctx->saved_data["generator"] = generator;
    ctx->saved_data["criterion"] = criterion;
    ctx->saved_data["reduction"] = reduction;
    ctx->saved_data["epsilon"] = epsilon;
    return loss;
  }

  static variable_list backward(AutogradContext* ctx, const variable_list& grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& d = ctx->saved_data;
    std::optional<at::Tensor> weight = saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    at::Tensor g = _regression_disparity_backward(grad_outputs[0], saved[0], weight, saved[2], saved[3],
                                                  d.at("mode").toInt(), d.at("sigma").toDouble(),
                                                  d.at("generator").toInt(), d.at("criterion").toInt(),
                                                  d.at("reduction").toInt(), d.at("epsilon").toDouble());
    variable_list grads(9);
    grads[1] = g;
    return grads;
  }
};

at::Tensor regression_disparity_autograd(const at::Tensor& y, const at::Tensor& y_adv,
                                         const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
                                         int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  return RegressionDisparityFunction::apply(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("regression_disparity", &regression_disparity_autograd);
}

}  // namespace hal_ext
