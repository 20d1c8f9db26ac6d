#pragma once
// The dtype an op writes its result in. `out_dtype` None (the default) gives the input dtype; the only
// other choice is the input's accumulation dtype (float32 for float16/bfloat16 inputs), which the
// Autocast kernels ask for where tllib's composition returns float32 under torch.autocast
// (csrc/ops/autocast/). The kernels accumulate in that dtype anyway, so they write it directly.
#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <optional>
#include <type_traits>

namespace hal_ext {

inline at::ScalarType result_dtype(const std::optional<at::ScalarType>& out_dtype, at::ScalarType input) {
  if (!out_dtype.has_value()) return input;
  const at::ScalarType acc = at::toOpMathType(input);
  TORCH_CHECK_TYPE(*out_dtype == input || *out_dtype == acc, "out_dtype must be None, ", input, " or ", acc, " for ",
                   input, " inputs, got ", *out_dtype);
  return *out_dtype;
}

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the C++ type of `dtype`, which is scalar_t's or at::opmath_type<scalar_t>'s
// (a result_dtype of scalar_t inputs, or the dtype of the incoming gradient of such a result).
template <typename scalar_t, typename F>
void with_scalar_or_acc_type(at::ScalarType dtype, const F& f) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (!std::is_same_v<scalar_t, acc_t>) {
    if (dtype == c10::CppTypeToScalarType<acc_t>::value) {
      f(TypeTag<acc_t>{});
      return;
    }
  }
  f(TypeTag<scalar_t>{});
}

}  // namespace hal_ext
