// Schema and dispatcher entry points of hal_ext::regression_disparity: RegDA's regression disparity
// (pseudo labels from y's peaks, then JointsMSELoss / JointsKLLoss against y_adv) in one fused op
// that never writes the B*K*H*W pseudo-label maps.
#include "regression_disparity.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/ones_like.h>
#include <torch/library.h>

namespace hal_ext {

at::Tensor regression_disparity(const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight,
                                int64_t mode, double sigma, int64_t generator, int64_t criterion, int64_t reduction,
                                double epsilon) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::regression_disparity", "")
                       .typed<decltype(regression_disparity)>();
  return op.call(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> _regression_disparity_forward(
    const at::Tensor& y, const at::Tensor& y_adv, const std::optional<at::Tensor>& weight, int64_t mode, double sigma,
    int64_t generator, int64_t criterion, int64_t reduction, double epsilon) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_regression_disparity_forward", "")
                       .typed<decltype(_regression_disparity_forward)>();
  return op.call(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
}

at::Tensor _regression_disparity_backward(const at::Tensor& grad, const at::Tensor& y_adv,
                                          const std::optional<at::Tensor>& weight, const at::Tensor& peaks,
                                          const at::Tensor& stats, int64_t mode, double sigma, int64_t generator,
                                          int64_t criterion, int64_t reduction, double epsilon) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_regression_disparity_backward", "")
                       .typed<decltype(_regression_disparity_backward)>();
  return op.call(grad, y_adv, weight, peaks, stats, mode, sigma, generator, criterion, reduction, epsilon);
}

std::tuple<at::Tensor, at::Tensor> _regression_disparity_with_grad(const at::Tensor& y, const at::Tensor& y_adv,
                                                                   const std::optional<at::Tensor>& weight,
                                                                   int64_t mode, double sigma, int64_t generator,
                                                                   int64_t criterion, int64_t reduction,
                                                                   double epsilon) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_regression_disparity_with_grad", "")
                       .typed<decltype(_regression_disparity_with_grad)>();
  return op.call(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
}

namespace regression_disparity_detail {

bool fused_grad_supported(const at::Tensor& y_adv) {
  const auto dtype = y_adv.scalar_type();
  return dtype == at::kFloat || dtype == at::kDouble;
}

std::tuple<at::Tensor, at::Tensor> with_grad_composite(const at::Tensor& y, const at::Tensor& y_adv,
                                                       const std::optional<at::Tensor>& weight, int64_t mode,
                                                       double sigma, int64_t generator, int64_t criterion,
                                                       int64_t reduction, double epsilon) {
  auto [loss, peaks, stats] =
      _regression_disparity_forward(y, y_adv, weight, mode, sigma, generator, criterion, reduction, epsilon);
  at::Tensor grad = _regression_disparity_backward(at::ones_like(loss), y_adv, weight, peaks, stats, mode, sigma,
                                                   generator, criterion, reduction, epsilon);
  return {loss, grad};
}

}  // namespace regression_disparity_detail

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("regression_disparity(Tensor y, Tensor y_adv, Tensor? weight, int mode, float sigma, int generator, "
        "int criterion, int reduction, float epsilon) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_regression_disparity_forward(Tensor y, Tensor y_adv, Tensor? weight, int mode, float sigma, int generator, "
        "int criterion, int reduction, float epsilon) -> (Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_regression_disparity_backward(Tensor grad, Tensor y_adv, Tensor? weight, Tensor peaks, Tensor stats, "
        "int mode, float sigma, int generator, int criterion, int reduction, float epsilon) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_regression_disparity_with_grad(Tensor y, Tensor y_adv, Tensor? weight, int mode, float sigma, "
        "int generator, int criterion, int reduction, float epsilon) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(hal_ext, CompositeExplicitAutograd, m) {
  m.impl("_regression_disparity_with_grad", &regression_disparity_detail::with_grad_composite);
}

}  // namespace hal_ext
