// Schema and dispatcher entry points of hal_ext::classifier_discrepancy.
#include "classifier_discrepancy.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/ones_like.h>
#include <torch/library.h>

namespace hal_ext {

at::Tensor classifier_discrepancy(const at::Tensor& predictions1, const at::Tensor& predictions2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::classifier_discrepancy", "")
                       .typed<decltype(classifier_discrepancy)>();
  return op.call(predictions1, predictions2);
}

std::tuple<at::Tensor, at::Tensor> _classifier_discrepancy_backward(const at::Tensor& grad,
                                                                     const at::Tensor& predictions1,
                                                                     const at::Tensor& predictions2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_classifier_discrepancy_backward", "")
                       .typed<decltype(_classifier_discrepancy_backward)>();
  return op.call(grad, predictions1, predictions2);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> _classifier_discrepancy_with_grad(const at::Tensor& predictions1,
                                                                                 const at::Tensor& predictions2) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_classifier_discrepancy_with_grad", "")
                       .typed<decltype(_classifier_discrepancy_with_grad)>();
  return op.call(predictions1, predictions2);
}

namespace cd_detail {

bool fused_grad_supported(const at::Tensor& predictions) {
  const auto dtype = predictions.scalar_type();
  return dtype == at::kFloat || dtype == at::kDouble;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> classifier_discrepancy_with_grad_composite(
    const at::Tensor& predictions1, const at::Tensor& predictions2) {
  at::Tensor loss = classifier_discrepancy(predictions1, predictions2);
  auto [g1, g2] = _classifier_discrepancy_backward(at::ones_like(loss), predictions1, predictions2);
  return {loss, g1, g2};
}

}  // namespace cd_detail

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("classifier_discrepancy(Tensor predictions1, Tensor predictions2) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_classifier_discrepancy_backward(Tensor grad, Tensor predictions1, Tensor predictions2) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_classifier_discrepancy_with_grad(Tensor predictions1, Tensor predictions2) -> (Tensor, Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(hal_ext, CompositeExplicitAutograd, m) {
  m.impl("_classifier_discrepancy_with_grad", &cd_detail::classifier_discrepancy_with_grad_composite);
}

}  // namespace hal_ext
