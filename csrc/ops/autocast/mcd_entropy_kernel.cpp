// Autocast kernel of hal_ext::mcd_entropy, CUDA only: tllib's -mean(log(mean(p, 0) + 1e-6)) runs its
// log in float32 under CUDA autocast (float16/bfloat16 predictions give a float32 loss); on the CPU,
// log is on no autocast list and the loss keeps the predictions' dtype (no AutocastCPU kernel).
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "ops/autocast/autocast.h"
#include "ops/mcd_entropy.h"

namespace hal_ext {
namespace {

std::tuple<at::Tensor, at::Tensor> mcd_entropy_autocast_cuda(const at::Tensor& predictions,
                                                             std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  return mcd_entropy(predictions, autocast::float32_result(predictions, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, AutocastCUDA, m) {
  m.impl("mcd_entropy", &mcd_entropy_autocast_cuda);
}

}  // namespace hal_ext
