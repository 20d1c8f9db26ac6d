// Autograd kernels of hal_ext::pseudo_label_2d / fast_pseudo_label_2d. The pseudo labels are not
// differentiable (they depend on y only through an argmax): run the op below autograd, so inputs that
// require grad are accepted and the outputs never require grad.
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

#include "ops/pseudo_label.h"

namespace hal_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> pseudo_label_2d_autograd(const at::Tensor& y, double sigma) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return pseudo_label_2d(y, sigma);
}

std::tuple<at::Tensor, at::Tensor> fast_pseudo_label_2d_autograd(const at::Tensor& y, double sigma) {
  at::AutoDispatchBelowADInplaceOrView guard;
  return fast_pseudo_label_2d(y, sigma);
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, Autograd, m) {
  m.impl("pseudo_label_2d", &pseudo_label_2d_autograd);
  m.impl("fast_pseudo_label_2d", &fast_pseudo_label_2d_autograd);
}

}  // namespace hal_ext
