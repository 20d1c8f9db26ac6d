// CPU kernels of hal_ext::shift_log (math in shift_log_math.h): elementwise, memory-bound, one
// vectorised pass (hal_log) over fixed-size chunks across threads.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cpu_parallel.h"
#include "common/loss_dtype.h"
#include "common/macros.h"
#include "ops/shift_log.h"
#include "ops/shift_log_math.h"

namespace hal_ext {
namespace {

namespace math = shift_log_math;
// Elements per thread task: below this the loop runs on the calling thread (waking threads costs
// more than the memory-bound loop saves).
constexpr int64_t kGrain = int64_t(1) << 16;

// The loops live in plain functions (pointers as arguments, not lambda captures) so that GCC
// vectorises them: through captured references it gives up ("control flow in loop").
// out_t / grad_t: x's type, or its accumulation type (a float32 result of half x under autocast).
template <typename scalar_t, typename acc_t, typename out_t>
void value_range(const scalar_t* in, out_t* o, int64_t begin, int64_t end, acc_t off) {
  HAL_SIMD
  for (int64_t i = begin; i < end; ++i) o[i] = static_cast<out_t>(math::value<acc_t>(in[i], off));
}

template <typename scalar_t, typename acc_t, typename grad_t>
void grad_range(const grad_t* g, const scalar_t* in, scalar_t* o, int64_t begin, int64_t end, acc_t off) {
  HAL_SIMD
  for (int64_t i = begin; i < end; ++i) o[i] = static_cast<scalar_t>(math::grad<acc_t>(g[i], in[i], off));
}

at::Tensor shift_log_cpu(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype) {
  check_float_tensor(x, "x");
  check_shift_log_offset(offset);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc, xc.options().dtype(result_dtype(out_dtype, xc.scalar_type())));
  const int64_t n = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "shift_log_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t off = static_cast<acc_t>(offset);
    const scalar_t* in = xc.const_data_ptr<scalar_t>();
    with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      out_t* o = out.mutable_data_ptr<out_t>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        value_range<scalar_t, acc_t>(in, o, begin, end, off);
      });
    });
  });
  return out;
}

at::Tensor shift_log_backward_cpu(const at::Tensor& grad, const at::Tensor& x, double offset) {
  check_float_tensor(x, "x");
  check_shift_log_grad(grad, x);
  check_shift_log_offset(offset);
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t n = xc.numel();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "shift_log_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t off = static_cast<acc_t>(offset);
    const scalar_t* in = xc.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    with_scalar_or_acc_type<scalar_t>(gc.scalar_type(), [&](auto tag) {
      const auto* g = gc.const_data_ptr<typename decltype(tag)::type>();
      at::parallel_for(0, n, kGrain, [&](int64_t begin, int64_t end) {
        grad_range<scalar_t, acc_t>(g, in, o, begin, end, off);
      });
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("shift_log", &shift_log_cpu);
  m.impl("_shift_log_backward", &shift_log_backward_cpu);
}

}  // namespace hal_ext
