// Schema and dispatcher entry points of hal_ext::shift_log.
#include "shift_log.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace hal_ext {

at::Tensor shift_log(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::shift_log", "")
                       .typed<decltype(shift_log)>();
  return op.call(x, offset, out_dtype);
}

at::Tensor _shift_log_backward(const at::Tensor& grad, const at::Tensor& x, double offset) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("hal_ext::_shift_log_backward", "")
                       .typed<decltype(_shift_log_backward)>();
  return op.call(grad, x, offset);
}

TORCH_LIBRARY_FRAGMENT(hal_ext, m) {
  m.def("shift_log(Tensor x, float offset, ScalarType? out_dtype=None) -> Tensor", {at::Tag::pt2_compliant_tag});
  m.def("_shift_log_backward(Tensor grad, Tensor x, float offset) -> Tensor", {at::Tag::pt2_compliant_tag});
}

}  // namespace hal_ext
