// Schema and dispatcher entry points of hal_ext::mcd_entropy.
#include "mcd_entropy.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace hal_ext {

std::tuple<at::Tensor, at::Tensor> mcd_entropy(const at::Tensor& predictions) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::mcd_entropy", "")
                       .typed<decltype(mcd_entropy)>();
  return op.call(predictions);
}

at::Tensor _mcd_entropy_backward(const at::Tensor& grad, const at::Tensor& column_means, c10::SymInt batch_size) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_mcd_entropy_backward", "")
                       .typed<decltype(_mcd_entropy_backward)>();
  return op.call(grad, column_means, std::move(batch_size));
}

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("mcd_entropy(Tensor predictions) -> (Tensor, Tensor)", {at::Tag::pt2_compliant_tag});
  m.def("_mcd_entropy_backward(Tensor grad, Tensor column_means, SymInt batch_size) -> Tensor",
        {at::Tag::pt2_compliant_tag});
}

}  // namespace hal_ext
