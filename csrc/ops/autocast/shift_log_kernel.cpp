// Autocast kernel of hal_ext::shift_log, CUDA only: tllib's log(clamp(x + offset, max=1)) runs its log
// in float32 under CUDA autocast (float16/bfloat16 x gives a float32 result, written directly by the
// kernel); on the CPU, log is on no autocast list and the result keeps x's dtype (no AutocastCPU kernel).
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include "ops/autocast/autocast.h"
#include "ops/shift_log.h"

namespace hal_ext {
namespace {

at::Tensor shift_log_autocast_cuda(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  return shift_log(x, offset, autocast::float32_result(x, out_dtype));
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, AutocastCUDA, m) {
  m.impl("shift_log", &shift_log_autocast_cuda);
}

}  // namespace hal_ext
