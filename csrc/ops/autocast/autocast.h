#pragma once
// Shared by the Autocast kernels (one file per op in csrc/ops/autocast/). Under torch.autocast a loss
// returns the dtype tllib's composition returns on that device: where that composition ends in an op of
// autocast's float32 list (cross_entropy, nll_loss, kl_div, mse_loss, l1_loss on CPU and CUDA; also log
// on CUDA), float16/bfloat16 inputs give a float32 loss. The kernels already read the half inputs and
// accumulate in float32, so the Autocast kernel casts nothing: it asks the op for a float32 result
// (out_dtype, common/loss_dtype.h) and redispatches below autocast.
#include <ATen/core/Tensor.h>
#include <c10/core/DispatchKey.h>
#include <c10/core/ScalarType.h>

#include <optional>

namespace hal_ext {
namespace autocast {

// The out_dtype of an op whose tllib composition ends in autocast's float32 list: float32 for
// float16/bfloat16 inputs unless the caller chose one; float32/float64 inputs keep their dtype, as
// autocast leaves them.
inline std::optional<at::ScalarType> float32_result(const at::Tensor& input, std::optional<at::ScalarType> out_dtype) {
  if (out_dtype.has_value() || !at::isReducedFloatingType(input.scalar_type())) return out_dtype;
  return at::kFloat;
}

}  // namespace autocast
}  // namespace hal_ext
