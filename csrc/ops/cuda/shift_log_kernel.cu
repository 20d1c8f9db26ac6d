// CUDA kernels of hal_ext::shift_log (math in shift_log_math.h): y = log(min(x + offset, 1)),
// dy/dx = g / (x + offset) where x + offset < 1, else 0. One grid-stride launch each way, several loads
// in flight per thread (common/cuda_elementwise.cuh).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_elementwise.cuh"
#include "common/loss_dtype.h"
#include "ops/shift_log.h"
#include "ops/shift_log_math.h"

namespace hal_ext {
namespace {

namespace math = shift_log_math;
constexpr int kThreads = 256;

// out_t / grad_t: x's type, or its accumulation type (a float32 result of half x under autocast).
template <typename scalar_t, typename acc_t, typename out_t>
__global__ void shift_log_kernel(const scalar_t* x, out_t* out, acc_t offset, int64_t n) {
  cuda::for_each_unrolled(
      n, [&](int64_t i) { return x[i]; },
      [&](int64_t i, scalar_t xi) {
        out[i] = static_cast<out_t>(math::value<acc_t>(static_cast<acc_t>(xi), offset));
      });
}

// One element's inputs to the backward, loaded together.
template <typename grad_t, typename scalar_t>
struct GradAndInput {
  grad_t g;
  scalar_t x;
};

template <typename scalar_t, typename acc_t, typename grad_t>
__global__ void shift_log_backward_kernel(const grad_t* grad, const scalar_t* x, scalar_t* out, acc_t offset,
                                          int64_t n) {
  cuda::for_each_unrolled(
      n, [&](int64_t i) { return GradAndInput<grad_t, scalar_t>{grad[i], x[i]}; },
      [&](int64_t i, const GradAndInput<grad_t, scalar_t>& v) {
        out[i] = static_cast<scalar_t>(math::grad<acc_t>(static_cast<acc_t>(v.g), static_cast<acc_t>(v.x), offset));
      });
}

at::Tensor shift_log_cuda(const at::Tensor& x, double offset, std::optional<at::ScalarType> out_dtype) {
  check_float_tensor(x, "x");
  check_shift_log_offset(offset);
  cuda::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty_like(xc, xc.options().dtype(result_dtype(out_dtype, xc.scalar_type())));
  const int64_t n = xc.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "shift_log_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
      using out_t = typename decltype(tag)::type;
      cuda::launch(shift_log_kernel<scalar_t, acc_t, out_t>, {cuda::unrolled_blocks(n, kThreads), kThreads},
          xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<out_t>(), static_cast<acc_t>(offset), n);
    });
  });
  return out;
}

at::Tensor shift_log_backward_cuda(const at::Tensor& grad, const at::Tensor& x, double offset) {
  check_float_tensor(x, "x");
  check_shift_log_grad(grad, x);
  check_shift_log_offset(offset);
  cuda::DeviceGuard guard(x.device());
  const at::Tensor xc = x.contiguous(), gc = grad.contiguous();
  at::Tensor out = at::empty_like(xc);
  const int64_t n = xc.numel();
  if (n == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "shift_log_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_scalar_or_acc_type<scalar_t>(gc.scalar_type(), [&](auto tag) {
      using grad_t = typename decltype(tag)::type;
      cuda::launch(shift_log_backward_kernel<scalar_t, acc_t, grad_t>,
          {cuda::unrolled_blocks(n, kThreads), kThreads}, gc.const_data_ptr<grad_t>(),
          xc.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), static_cast<acc_t>(offset), n);
    });
  });
  return out;
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("shift_log", &shift_log_cuda);
  m.impl("_shift_log_backward", &shift_log_backward_cuda);
}

}  // namespace hal_ext
