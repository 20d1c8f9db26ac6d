// Autocast kernels of hal_ext::joints_mse_loss and hal_ext::joints_kl_loss (CPU and CUDA): tllib's
// JointsMSELoss / JointsKLLoss end in nn.MSELoss / nn.KLDivLoss, on autocast's float32 list on both
// devices, so float16/bfloat16 heatmaps give a float32 loss (see autocast.h).
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "ops/autocast/autocast.h"
#include "ops/joints_loss.h"

namespace hal_ext {
namespace {

template <c10::DispatchKey kAutocast>
at::Tensor joints_mse_loss_autocast(const at::Tensor& output, const at::Tensor& target,
                                    const std::optional<at::Tensor>& target_weight, int64_t reduction,
                                    std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocast);
  return joints_mse_loss(output, target, target_weight, reduction, autocast::float32_result(output, out_dtype));
}

template <c10::DispatchKey kAutocast>
at::Tensor joints_kl_loss_autocast(const at::Tensor& output, const at::Tensor& target,
                                   const std::optional<at::Tensor>& target_weight, int64_t reduction, double epsilon,
                                   std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kAutocast);
  return joints_kl_loss(output, target, target_weight, reduction, epsilon,
                        autocast::float32_result(output, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, AutocastCPU, m) {
  m.impl("joints_mse_loss", &joints_mse_loss_autocast<c10::DispatchKey::AutocastCPU>);
  m.impl("joints_kl_loss", &joints_kl_loss_autocast<c10::DispatchKey::AutocastCPU>);
}

TORCH_LIBRARY_IMPL(hal_ext, AutocastCUDA, m) {
  m.impl("joints_mse_loss", &joints_mse_loss_autocast<c10::DispatchKey::AutocastCUDA>);
  m.impl("joints_kl_loss", &joints_kl_loss_autocast<c10::DispatchKey::AutocastCUDA>);
}

}  // namespace hal_ext
