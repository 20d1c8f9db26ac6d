// Autocast kernels of hal_ext::classification_mdd and hal_ext::regression_mdd (CPU and CUDA): tllib's
// compositions end in F.cross_entropy / F.nll_loss and F.l1_loss / F.mse_loss, all on autocast's
// float32 list on both devices, so float16/bfloat16 logits give a float32 loss (see autocast.h).
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "ops/autocast/autocast.h"
#include "ops/mdd.h"

namespace hal_ext {
namespace {

template <c10::DispatchKey kAutocast>
std::tuple<at::Tensor, at::Tensor, at::Tensor> classification_mdd_autocast(
    const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t, const at::Tensor& y_t_adv,
    const std::optional<at::Tensor>& w_s, const std::optional<at::Tensor>& w_t, double margin, int64_t reduction,
    std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocast);
  return classification_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, reduction,
                            autocast::float32_result(y_s_adv, out_dtype));
}

template <c10::DispatchKey kAutocast>
at::Tensor regression_mdd_autocast(const at::Tensor& y_s, const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                   const at::Tensor& y_t_adv, const std::optional<at::Tensor>& w_s,
                                   const std::optional<at::Tensor>& w_t, double margin, int64_t loss_kind,
                                   int64_t reduction, std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocast);
  return regression_mdd(y_s, y_s_adv, y_t, y_t_adv, w_s, w_t, margin, loss_kind, reduction,
                        autocast::float32_result(y_s_adv, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, AutocastCPU, m) {
  m.impl("classification_mdd", &classification_mdd_autocast<c10::DispatchKey::AutocastCPU>);
  m.impl("regression_mdd", &regression_mdd_autocast<c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(hal_ext, AutocastCUDA, m) {
  m.impl("classification_mdd", &classification_mdd_autocast<c10::DispatchKey::AutocastCUDA>);
  m.impl("regression_mdd", &regression_mdd_autocast<c10::DispatchKey::AutocastCUDA>);
}

}  // namespace hal_ext
