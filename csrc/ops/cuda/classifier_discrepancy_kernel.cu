// CUDA kernels of hal_ext::classifier_discrepancy (math in classifier_discrepancy_math.h).
// Forward: one deterministic sum of |p1 - p2| (one launch up to 2^17 elements). Backward: one
// elementwise launch that reads the incoming gradient on the device (no host synchronisation).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "common/checks.h"
#include "common/cuda_reduce.cuh"
#include "ops/classifier_discrepancy_math.h"

namespace hal_ext {
namespace {

namespace math = classifier_discrepancy_math;

template <typename scalar_t, typename acc_t>
struct AbsDiffTerm {
  const scalar_t* a;
  const scalar_t* b;
  __device__ acc_t operator()(int64_t i) const { return math::term<acc_t>(a[i], b[i]); }
};

template <typename scalar_t, typename acc_t>
struct WriteMean {
  scalar_t* out;
  int64_t n;
  __device__ void operator()(acc_t total) const { *out = static_cast<scalar_t>(total / static_cast<acc_t>(n)); }
};

template <typename scalar_t, typename acc_t>
__global__ void classifier_discrepancy_backward_kernel(const scalar_t* grad, const scalar_t* a, const scalar_t* b,
                                                       scalar_t* o1, scalar_t* o2, int64_t n) {
  const acc_t g_over_n = static_cast<acc_t>(*grad) / static_cast<acc_t>(n);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
    const acc_t d = math::grad<acc_t>(a[i], b[i], g_over_n);
    o1[i] = static_cast<scalar_t>(d);
    o2[i] = static_cast<scalar_t>(-d);
  }
}

at::Tensor classifier_discrepancy_cuda(const at::Tensor& predictions1, const at::Tensor& predictions2) {
  check_float_tensor(predictions1, "predictions1");
  check_paired(predictions1, "predictions1", predictions2, "predictions2");
  cuda::DeviceGuard guard(predictions1.device());
  const at::Tensor p1 = predictions1.contiguous(), p2 = predictions2.contiguous();
  const int64_t n = p1.numel();
  at::Tensor out = at::empty({}, p1.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p1.scalar_type(), "classifier_discrepancy_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch_ordered_sum<acc_t>(
        p1, n, AbsDiffTerm<scalar_t, acc_t>{p1.const_data_ptr<scalar_t>(), p2.const_data_ptr<scalar_t>()},
        WriteMean<scalar_t, acc_t>{out.mutable_data_ptr<scalar_t>(), n});
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> classifier_discrepancy_backward_cuda(const at::Tensor& grad,
                                                                         const at::Tensor& predictions1,
                                                                         const at::Tensor& predictions2) {
  check_scalar_grad(grad);
  check_float_tensor(predictions1, "predictions1");
  check_paired(predictions1, "predictions1", predictions2, "predictions2");
  check_same_device(predictions1, "predictions1", grad, "grad");
  cuda::DeviceGuard guard(predictions1.device());
  const at::Tensor p1 = predictions1.contiguous(), p2 = predictions2.contiguous();
  const at::Tensor g = grad.to(p1.scalar_type());
  const int64_t n = p1.numel();
  at::Tensor g1 = at::empty_like(p1), g2 = at::empty_like(p2);
  if (n == 0) return {g1, g2};
  constexpr int threads = 256;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p1.scalar_type(), "classifier_discrepancy_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    cuda::launch(classifier_discrepancy_backward_kernel<scalar_t, acc_t>, {cuda::elementwise_blocks(n, threads), threads},
        g.const_data_ptr<scalar_t>(), p1.const_data_ptr<scalar_t>(), p2.const_data_ptr<scalar_t>(),
        g1.mutable_data_ptr<scalar_t>(), g2.mutable_data_ptr<scalar_t>(), n);
  });
  return {g1, g2};
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("classifier_discrepancy", &classifier_discrepancy_cuda);
  m.impl("_classifier_discrepancy_backward", &classifier_discrepancy_backward_cuda);
}

}  // namespace hal_ext
