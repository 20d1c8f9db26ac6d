// CUDA kernels of hal_ext::joints_mse_loss and hal_ext::joints_kl_loss (math in joints_loss_math.h).
// One block per (b, k) row: MSE row = w * sum 0.5 (z - x)^2; KL row = w * sum [xlogy(t, t) - t log_softmax(z)].
// 'mean' adds a deterministic ordered sum of the row losses. No host synchronisation.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "common/loss_dtype.h"
#include "ops/cuda/joints_loss_rows.cuh"
#include "ops/joints_loss_common.h"

namespace hal_ext {
namespace {

using namespace joints_loss;
using namespace joints_loss_cuda;

template <typename scalar_t>
struct TensorTarget {
  const scalar_t* x;
  int64_t n;
  __device__ void prepare(int64_t) const {}
  __device__ scalar_t operator()(int64_t r, int64_t p) const { return x[r * n + p]; }
};

// Row losses (acc dtype) -> the result in the loss dtype (a no-op cast when it is the acc dtype).
at::Tensor finish(const at::Tensor& rows, at::ScalarType loss_dtype, const Rows& s, int64_t reduction) {
  if (reduction == 0) return rows.view({s.B, s.K}).to(loss_dtype);
  at::Tensor total = at::empty({}, rows.options());
  AT_DISPATCH_FLOATING_TYPES(rows.scalar_type(), "joints_loss_mean_cuda", [&] {
    cuda::launch_ordered_sum<scalar_t>(rows, rows.numel(), RowsTerm<scalar_t>{rows.const_data_ptr<scalar_t>()},
                                       WriteMeanOf<scalar_t>{total.mutable_data_ptr<scalar_t>(),
                                                             static_cast<scalar_t>(rows.numel())});
  });
  return total.to(loss_dtype);
}

template <bool kKL>
std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& output, const at::Tensor& target,
                                                const std::optional<at::Tensor>& target_weight, int64_t reduction,
                                                double epsilon, std::optional<at::ScalarType> out_dtype) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  const auto loss_dtype = result_dtype(out_dtype, output.scalar_type());
  cuda::DeviceGuard guard(output.device());
  const auto acc = acc_dtype(output.scalar_type());
  const at::Tensor z = output.contiguous(), x = target.contiguous();
  const at::Tensor w = weight_rows(target_weight, acc);
  at::Tensor rows = at::empty({s.rows()}, output.options().dtype(acc));
  at::Tensor stats = at::zeros({s.B, s.K, 2}, output.options().dtype(acc));
  const int64_t n = s.n;
  if (s.rows() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_loss_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      cuda::launch(row_forward_kernel<scalar_t, acc_t, kKL, TensorTarget<scalar_t>>, {row_grid(s.rows()), kRowThreads},
          z.const_data_ptr<scalar_t>(), TensorTarget<scalar_t>{x.const_data_ptr<scalar_t>(), n},
          w.defined() ? w.const_data_ptr<acc_t>() : nullptr, s.rows(), n, static_cast<acc_t>(epsilon),
          kKL ? acc_t(1) : static_cast<acc_t>(n), rows.mutable_data_ptr<acc_t>(), stats.mutable_data_ptr<acc_t>());
    });
  }
  return {finish(rows, loss_dtype, s, reduction), stats};
}

template <bool kKL>
at::Tensor backward_cuda(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                         const std::optional<at::Tensor>& target_weight, const at::Tensor* stats, int64_t reduction,
                         double epsilon) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  check_grad(grad, output, reduction, s.B, s.K);
  cuda::DeviceGuard guard(output.device());
  const auto acc = acc_dtype(output.scalar_type());
  if (stats) check_kl_stats(*stats, output, s);
  const at::Tensor z = output.contiguous(), x = target.contiguous();
  const at::Tensor st = stats ? stats->contiguous() : at::Tensor();
  const at::Tensor w = weight_rows(target_weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  if (result.numel() == 0) return result;
  const int64_t n = s.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_loss_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t row_div = kKL ? acc_t(1) : static_cast<acc_t>(n);
    const acc_t divisor = reduction == 1 ? static_cast<acc_t>(s.rows()) * row_div : row_div;
    cuda::launch(row_backward_kernel<scalar_t, acc_t, kKL, TensorTarget<scalar_t>>, {row_grid(s.rows()), kRowThreads},
        g.const_data_ptr<acc_t>(), reduction == 1, z.const_data_ptr<scalar_t>(),
        TensorTarget<scalar_t>{x.const_data_ptr<scalar_t>(), n}, w.defined() ? w.const_data_ptr<acc_t>() : nullptr,
        st.defined() ? st.const_data_ptr<acc_t>() : nullptr, s.rows(), n, static_cast<acc_t>(epsilon), divisor,
        result.mutable_data_ptr<scalar_t>());
  });
  return result;
}

at::Tensor mse_cuda(const at::Tensor& o, const at::Tensor& t, const std::optional<at::Tensor>& w, int64_t red,
                    std::optional<at::ScalarType> out_dtype) {
  return std::get<0>(forward_cuda<false>(o, t, w, red, 0.0, out_dtype));
}
at::Tensor mse_backward_cuda(const at::Tensor& g, const at::Tensor& o, const at::Tensor& t,
                             const std::optional<at::Tensor>& w, int64_t red) {
  return backward_cuda<false>(g, o, t, w, nullptr, red, 0.0);
}
std::tuple<at::Tensor, at::Tensor> kl_forward_cuda(const at::Tensor& o, const at::Tensor& t,
                                                   const std::optional<at::Tensor>& w, int64_t red, double eps,
                                                   std::optional<at::ScalarType> out_dtype) {
  return forward_cuda<true>(o, t, w, red, eps, out_dtype);
}
at::Tensor kl_cuda(const at::Tensor& o, const at::Tensor& t, const std::optional<at::Tensor>& w, int64_t red,
                   double eps, std::optional<at::ScalarType> out_dtype) {
  return std::get<0>(forward_cuda<true>(o, t, w, red, eps, out_dtype));
}
at::Tensor kl_backward_cuda(const at::Tensor& g, const at::Tensor& o, const at::Tensor& t,
                            const std::optional<at::Tensor>& w, const at::Tensor& stats, int64_t red, double eps) {
  return backward_cuda<true>(g, o, t, w, &stats, red, eps);
}

}  // namespace

HAL_CUDA_LIBRARY_IMPL(m) {
  m.impl("joints_mse_loss", &mse_cuda);
  m.impl("_joints_mse_loss_backward", &mse_backward_cuda);
  m.impl("joints_kl_loss", &kl_cuda);
  m.impl("_joints_kl_loss_forward", &kl_forward_cuda);
  m.impl("_joints_kl_loss_backward", &kl_backward_cuda);
}

}  // namespace hal_ext
