#pragma once
// The `reduction` argument of the loss ops, numbered as torch's own (at::Reduction).
#include <c10/util/Exception.h>

#include <cstdint>

namespace hal_ext {

enum class Reduction : int64_t { None = 0, Mean = 1, Sum = 2 };

inline Reduction to_reduction(int64_t r) {
  TORCH_CHECK_VALUE(r >= 0 && r <= 2, "reduction must be 0 ('none'), 1 ('mean') or 2 ('sum'), got ", r);
  return static_cast<Reduction>(r);
}

}  // namespace hal_ext
