// Schema and dispatcher entry points of hal_ext::classifier_discrepancy.
#include "classifier_discrepancy.h"

#include <ATen/core/dispatch/Dispatcher.h>
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

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("classifier_discrepancy(Tensor predictions1, Tensor predictions2) -> Tensor",
        {at::Tag::pt2_compliant_tag});
  m.def("_classifier_discrepancy_backward(Tensor grad, Tensor predictions1, Tensor predictions2) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
}

}  // namespace hal_ext
