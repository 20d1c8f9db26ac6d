#pragma once
// Argument checks shared by every op's kernels. They raise the Python exception a user expects
// (TypeError for dtypes, ValueError for shapes and values) and name the argument, the expected and
// the received value. The Python front end checks first; these keep direct op calls safe.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace hal_ext {

inline bool is_supported_float(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16;
}

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK_VALUE(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), name,
                   " must be a float16, bfloat16, float32 or float64 tensor, got ", t.scalar_type());
}

inline void check_same_shape(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.sizes() == b.sizes(), b_name, " must have the same shape as ", a_name, " ", a.sizes(),
                    ", got ", b.sizes());
}

inline void check_same_dtype(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), b_name, " must have the dtype of ", a_name, " (",
                   a.scalar_type(), "), got ", b.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), b_name, " must be on the device of ", a_name, " (", a.device(),
                    "), got ", b.device());
}

// `b` is paired with `a`: same shape, dtype and device.
inline void check_paired(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name) {
  check_float_tensor(b, b_name);
  check_same_device(a, a_name, b, b_name);
  check_same_dtype(a, a_name, b, b_name);
  check_same_shape(a, a_name, b, b_name);
}

inline void check_scalar_grad(const at::Tensor& grad) {
  TORCH_CHECK_VALUE(grad.dim() == 0, "grad must be a 0-dim tensor, got shape ", grad.sizes());
}

}  // namespace hal_ext
