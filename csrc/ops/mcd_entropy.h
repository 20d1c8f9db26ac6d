#pragma once
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <tuple>

namespace hal_ext {

// Returns (loss, column_means); the loss has dtype out_dtype (common/loss_dtype.h), column_means has
// shape predictions.shape[1:] and the accumulation dtype (float32 for float16/bfloat16 inputs).
std::tuple<at::Tensor, at::Tensor> mcd_entropy(const at::Tensor& predictions,
                                               std::optional<at::ScalarType> out_dtype = std::nullopt);

// One row of the predictions' gradient, shape column_means.shape, dtype out_dtype (the predictions'
// dtype; None: grad's dtype, which is it or, for a float32 loss of half inputs, its accumulation dtype):
// every row of the gradient is the same, so the autograd kernel returns this row broadcast over the
// batch (stride 0, as torch's own sum backward): the backward writes M elements, not N * M. batch_size
// is N.
at::Tensor _mcd_entropy_backward(const at::Tensor& grad, const at::Tensor& column_means, c10::SymInt batch_size,
                                 std::optional<at::ScalarType> out_dtype = std::nullopt);

}  // namespace hal_ext

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include "common/checks.h"

namespace hal_ext {

inline void check_mcd_entropy_input(const at::Tensor& predictions) {
  check_float_tensor(predictions, "predictions");
  TORCH_CHECK_VALUE(predictions.dim() >= 1, "predictions must have at least 1 dimension (N, *), got shape ",
                    predictions.sizes());
}

// Returns the gradient's dtype: out_dtype, whose result dtype grad must have, or grad's. column_means
// must be a float tensor of its accumulation dtype.
inline at::ScalarType check_mcd_entropy_backward_input(const at::Tensor& grad, const at::Tensor& column_means,
                                                       int64_t batch_size, std::optional<at::ScalarType> out_dtype) {
  check_scalar_grad(grad);
  check_float_tensor(grad, "grad");
  check_float_tensor(column_means, "column_means");
  const at::ScalarType dtype = out_dtype.value_or(grad.scalar_type());
  TORCH_CHECK_TYPE(is_supported_float(dtype), "out_dtype must be a floating dtype, got ", dtype);
  const auto acc = at::toOpMathType(dtype);
  TORCH_CHECK_TYPE(grad.scalar_type() == dtype || grad.scalar_type() == acc, "grad must have dtype ", dtype, " or ",
                   acc, " for a ", dtype, " gradient, got ", grad.scalar_type());
  TORCH_CHECK_TYPE(column_means.scalar_type() == acc, "column_means must have dtype ", acc, " for a ", dtype,
                   " gradient, got ", column_means.scalar_type());
  TORCH_CHECK_VALUE(batch_size >= 0, "batch_size must be >= 0, got ", batch_size);
  return dtype;
}

}  // namespace hal_ext
