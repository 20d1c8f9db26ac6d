// Schemas and dispatcher entry points of hal_ext::pseudo_label_2d and hal_ext::fast_pseudo_label_2d
// (forward only: the pseudo labels are not differentiable).
#include "pseudo_label.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace hal_ext {

std::tuple<at::Tensor, at::Tensor> pseudo_label_2d(const at::Tensor& y, double sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::pseudo_label_2d", "")
                       .typed<decltype(pseudo_label_2d)>();
  return op.call(y, sigma);
}

std::tuple<at::Tensor, at::Tensor> fast_pseudo_label_2d(const at::Tensor& y, double sigma) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::fast_pseudo_label_2d", "")
                       .typed<decltype(fast_pseudo_label_2d)>();
  return op.call(y, sigma);
}

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("pseudo_label_2d(Tensor y, float sigma) -> (Tensor ground_truth, Tensor ground_false)",
        {at::Tag::pt2_compliant_tag});
  m.def("fast_pseudo_label_2d(Tensor y, float sigma) -> (Tensor ground_truth, Tensor ground_false)",
        {at::Tag::pt2_compliant_tag});
}

}  // namespace hal_ext
