#pragma once
// Checks of the saved index tensors that the internal (`_`-prefixed) backward operators address memory
// with. Anyone can call those operators with any tensor, so what a kernel reads through an index is
// validated first, at the cost of one pass over the (small) index tensor, never over the inputs.
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace hal_ext {

// `index` (int64) holds values in [0, bound). On the host: for a tensor on another device this checks
// nothing, and that device's kernel must assert the range where it reads an index (a host check would
// synchronise, which SPEC forbids: CUDA graphs).
inline void check_index_range(const at::Tensor& index_in, const char* name, int64_t bound) {
  TORCH_INTERNAL_ASSERT(index_in.scalar_type() == c10::kLong, name, " must be checked as an int64 tensor");
  if (!index_in.is_cpu()) return;
  const at::Tensor index = index_in.contiguous();
  const int64_t* p = index.const_data_ptr<int64_t>();
  const int64_t n = index.numel();
  int64_t lo = 0, hi = 0;  // every index in [lo, hi]; no early exit, so the loop vectorises
  for (int64_t i = 0; i < n; ++i) {
    lo = p[i] < lo ? p[i] : lo;
    hi = p[i] > hi ? p[i] : hi;
  }
  if (lo >= 0 && hi < bound) return;
  int64_t bad = 0;
  while (p[bad] >= 0 && p[bad] < bound) ++bad;
  TORCH_CHECK_VALUE(false, name, " must hold indices in [0, ", bound, "), got ", p[bad], " at flat position ", bad);
}

}  // namespace hal_ext
