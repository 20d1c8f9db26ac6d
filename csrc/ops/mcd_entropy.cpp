// Schema and dispatcher entry points of hal_ext::mcd_entropy.
#include "mcd_entropy.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace hal_ext {

std::tuple<at::Tensor, at::Tensor> mcd_entropy(const at::Tensor& predictions, std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::mcd_entropy", "")
                       .typed<decltype(mcd_entropy)>();
  return op.call(predictions, out_dtype);
}

at::Tensor _mcd_entropy_backward(const at::Tensor& grad, const at::Tensor& column_means, c10::SymInt batch_size,
                                 std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_mcd_entropy_backward", "")
                       .typed<decltype(_mcd_entropy_backward)>();
  return op.call(grad, column_means, std::move(batch_size), out_dtype);
}

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("mcd_entropy(Tensor predictions, ScalarType? out_dtype=None) -> (Tensor, Tensor)",
        {at::Tag::pt2_compliant_tag});
  m.def("_mcd_entropy_backward(Tensor grad, Tensor column_means, SymInt batch_size, ScalarType? out_dtype=None) "
        "-> Tensor",
        {at::Tag::pt2_compliant_tag});
}

}  // namespace hal_ext
