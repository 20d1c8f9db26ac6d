// CPU kernels of hal_ext::joints_mse_loss and hal_ext::joints_kl_loss (math in joints_loss_math.h).
// One (b, k) row of H*W pixels per task, row losses combined in row order (deterministic).
//   MSE: row = w * sum 0.5 (z - x)^2;  KL: row = w * sum [xlogy(t, t) - t log_softmax(z)], t = (x + eps) / S
//   (the KL row from its sums, kl_row_loss_from_sums: the log only at pixels whose target is not 0; the
//   sums in one pass against a shift below the row's maximum, kl_row_stats)
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <vector>

#include "common/cpu_parallel.h"
#include "common/loss_dtype.h"
#include "ops/cpu/joints_loss_rows.h"
#include "ops/joints_loss.h"
#include "ops/joints_loss_common.h"

namespace hal_ext {
namespace {

using namespace joints_loss;
using namespace joints_loss_cpu;

// Weighted row losses -> the output tensor (its dtype scalar_t's or acc_t's): (B, K) for 'none'
// (row / divisor), scalar mean otherwise.
template <typename scalar_t, typename acc_t>
void finish_rows(const std::vector<acc_t>& row, int64_t reduction, acc_t none_divisor, acc_t mean_divisor,
                 at::Tensor& out) {
  with_scalar_or_acc_type<scalar_t>(out.scalar_type(), [&](auto tag) {
    using out_t = typename decltype(tag)::type;
    out_t* o = out.mutable_data_ptr<out_t>();
    if (reduction == 0) {
      for (size_t r = 0; r < row.size(); ++r) o[r] = static_cast<out_t>(row[r] / none_divisor);
    } else {
      acc_t total = 0;
      for (const acc_t v : row) total += v;
      *o = static_cast<out_t>(total / mean_divisor);
    }
  });
}

// What a row's gradient divides the incoming gradient by: MSE's pixel count ('none') or all the pixels
// ('mean'); KL's 1 ('none') or the row count ('mean').
template <typename acc_t>
acc_t mse_grad_divisor(int64_t reduction, int64_t rows, int64_t n) {
  return reduction == 0 ? static_cast<acc_t>(n) : static_cast<acc_t>(rows) * n;
}
template <typename acc_t>
acc_t kl_grad_divisor(int64_t reduction, int64_t rows) {
  return reduction == 0 ? acc_t(1) : static_cast<acc_t>(rows);
}

at::Tensor new_loss(const at::Tensor& output, const Rows& s, int64_t reduction,
                    std::optional<at::ScalarType> out_dtype) {
  const auto options = output.options().dtype(result_dtype(out_dtype, output.scalar_type()));
  return reduction == 0 ? at::empty({s.B, s.K}, options) : at::empty({}, options);
}

// The MSE forward. With `unit_grad` (a tensor like output, float/double only), each row's gradient for a
// unit incoming gradient is also written in the pass that sums the row: bit for bit what the backward
// writes for grad = 1 (1 * w is w).
at::Tensor mse_forward(const at::Tensor& output, const at::Tensor& target,
                       const std::optional<at::Tensor>& target_weight, int64_t reduction,
                       std::optional<at::ScalarType> out_dtype, at::Tensor* unit_grad) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  const at::Tensor z = output.contiguous(), x = target.contiguous();
  const at::Tensor w = weight_rows(target_weight, acc_dtype(output.scalar_type()));
  at::Tensor out = new_loss(output, s, reduction, out_dtype);
  if (unit_grad) *unit_grad = at::empty_like(z);
  const int64_t rows = s.rows(), n = s.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_mse_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    scalar_t* gp = unit_grad ? unit_grad->mutable_data_ptr<scalar_t>() : nullptr;
    const acc_t divisor = mse_grad_divisor<acc_t>(reduction, rows, n);
    std::vector<acc_t> row(rows);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t v = gp ? mse_row_sum_and_grad<acc_t>(zp + r * n, xp + r * n, n,
                                                         row_grad_scale(acc_t(1), wp, r, divisor), gp + r * n)
                           : mse_row_sum<acc_t>(zp + r * n, xp + r * n, n);
        row[r] = wp ? v * wp[r] : v;
      }
    });
    finish_rows<scalar_t, acc_t>(row, reduction, static_cast<acc_t>(n), static_cast<acc_t>(rows) * n, out);
  });
  return out;
}

at::Tensor joints_mse_loss_cpu(const at::Tensor& output, const at::Tensor& target,
                               const std::optional<at::Tensor>& target_weight, int64_t reduction,
                               std::optional<at::ScalarType> out_dtype) {
  return mse_forward(output, target, target_weight, reduction, out_dtype, nullptr);
}

std::tuple<at::Tensor, at::Tensor> joints_mse_loss_with_grad_cpu(const at::Tensor& output, const at::Tensor& target,
                                                                 const std::optional<at::Tensor>& target_weight,
                                                                 int64_t reduction,
                                                                 std::optional<at::ScalarType> out_dtype) {
  if (!fused_grad_supported(output)) {  // half types (and anything check_inputs rejects, with its message)
    return joints_mse_loss_with_grad_composite(output, target, target_weight, reduction, out_dtype);
  }
  at::Tensor grad;
  at::Tensor loss = mse_forward(output, target, target_weight, reduction, out_dtype, &grad);
  return {loss, grad};
}

at::Tensor joints_mse_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                        const std::optional<at::Tensor>& target_weight, int64_t reduction) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  check_grad(grad, output, reduction, s.B, s.K);
  const auto acc = acc_dtype(output.scalar_type());
  const at::Tensor z = output.contiguous(), x = target.contiguous();
  const at::Tensor w = weight_rows(target_weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  const int64_t rows = s.rows(), n = s.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_mse_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.const_data_ptr<acc_t>();
    scalar_t* o = result.mutable_data_ptr<scalar_t>();
    const acc_t divisor = mse_grad_divisor<acc_t>(reduction, rows, n);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t scale = row_grad_scale(reduction == 0 ? gp[r] : gp[0], wp, r, divisor);
        mse_row_grad<acc_t>(zp + r * n, xp + r * n, n, scale, o + r * n);
      }
    });
  });
  return result;
}

// The KL forward: (loss, stats). With `unit_grad` (a tensor like output, float/double only), each row's
// gradient for a unit incoming gradient is also written while the row is in cache, from the exp(z - M)
// that the loss's pass stores (kl_row_forward_and_grad): the backward's gradient for grad = 1 to a few
// ulp (bit for bit on rows with inf/NaN logits).
std::tuple<at::Tensor, at::Tensor> kl_forward(const at::Tensor& output, const at::Tensor& target,
                                              const std::optional<at::Tensor>& target_weight, int64_t reduction,
                                              double epsilon, std::optional<at::ScalarType> out_dtype,
                                              at::Tensor* unit_grad) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  const auto acc = acc_dtype(output.scalar_type());
  const at::Tensor z = output.contiguous(), x = target.contiguous();
  const at::Tensor w = weight_rows(target_weight, acc);
  at::Tensor out = new_loss(output, s, reduction, out_dtype);
  at::Tensor stats = at::empty({s.B, s.K, 2}, output.options().dtype(acc));
  if (unit_grad) *unit_grad = at::empty_like(z);
  const int64_t rows = s.rows(), n = s.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_kl_loss_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    scalar_t* gp = unit_grad ? unit_grad->mutable_data_ptr<scalar_t>() : nullptr;
    acc_t* st = stats.mutable_data_ptr<acc_t>();
    const acc_t eps = static_cast<acc_t>(epsilon);
    const acc_t divisor = kl_grad_divisor<acc_t>(reduction, rows);
    std::vector<acc_t> row(rows);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const bool last = r + 1 == r1;  // the next row, prefetched during this one's sums pass
        const scalar_t* z_next = last ? nullptr : zp + (r + 1) * n;
        const scalar_t* x_next = last ? nullptr : xp + (r + 1) * n;
        const KLRowStats<acc_t> k =
            gp ? kl_row_forward_and_grad<acc_t>(zp + r * n, xp + r * n, n, eps,
                                                row_grad_scale(acc_t(1), wp, r, divisor), gp + r * n, z_next, x_next)
               : kl_row_forward<acc_t>(zp + r * n, xp + r * n, n, eps, z_next, x_next);
        row[r] = wp ? k.loss * wp[r] : k.loss;
        st[2 * r] = k.lse;
        st[2 * r + 1] = k.S;
      }
    });
    finish_rows<scalar_t, acc_t>(row, reduction, acc_t(1), static_cast<acc_t>(rows), out);
  });
  return {out, stats};
}

std::tuple<at::Tensor, at::Tensor> joints_kl_loss_forward_cpu(const at::Tensor& output, const at::Tensor& target,
                                                              const std::optional<at::Tensor>& target_weight,
                                                              int64_t reduction, double epsilon,
                                                              std::optional<at::ScalarType> out_dtype) {
  return kl_forward(output, target, target_weight, reduction, epsilon, out_dtype, nullptr);
}

std::tuple<at::Tensor, at::Tensor> joints_kl_loss_with_grad_cpu(const at::Tensor& output, const at::Tensor& target,
                                                                const std::optional<at::Tensor>& target_weight,
                                                                int64_t reduction, double epsilon,
                                                                std::optional<at::ScalarType> out_dtype) {
  if (!fused_grad_supported(output)) {  // half types (and anything check_inputs rejects, with its message)
    return joints_kl_loss_with_grad_composite(output, target, target_weight, reduction, epsilon, out_dtype);
  }
  at::Tensor grad;
  at::Tensor loss = std::get<0>(kl_forward(output, target, target_weight, reduction, epsilon, out_dtype, &grad));
  return {loss, grad};
}

at::Tensor joints_kl_loss_cpu(const at::Tensor& output, const at::Tensor& target,
                              const std::optional<at::Tensor>& target_weight, int64_t reduction, double epsilon,
                              std::optional<at::ScalarType> out_dtype) {
  return std::get<0>(joints_kl_loss_forward_cpu(output, target, target_weight, reduction, epsilon, out_dtype));
}

at::Tensor joints_kl_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                                       const std::optional<at::Tensor>& target_weight, const at::Tensor& stats,
                                       int64_t reduction, double epsilon) {
  const Rows s = check_inputs(output, target, target_weight, reduction);
  check_grad(grad, output, reduction, s.B, s.K);
  check_kl_stats(stats, output, s);
  const auto acc = acc_dtype(output.scalar_type());
  const at::Tensor z = output.contiguous(), x = target.contiguous(), st = stats.contiguous();
  const at::Tensor w = weight_rows(target_weight, acc);
  const at::Tensor g = grad.to(acc).contiguous();
  at::Tensor result = at::empty_like(z);
  const int64_t rows = s.rows(), n = s.n;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, z.scalar_type(), "joints_kl_loss_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* zp = z.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const acc_t* wp = w.defined() ? w.const_data_ptr<acc_t>() : nullptr;
    const acc_t* gp = g.const_data_ptr<acc_t>();
    const acc_t* sp = st.const_data_ptr<acc_t>();
    scalar_t* o = result.mutable_data_ptr<scalar_t>();
    const acc_t eps = static_cast<acc_t>(epsilon);
    const acc_t divisor = kl_grad_divisor<acc_t>(reduction, rows);
    at::parallel_for(0, rows, row_grain(n), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const acc_t scale = row_grad_scale(reduction == 0 ? gp[r] : gp[0], wp, r, divisor);
        kl_row_grad<acc_t>(zp + r * n, xp + r * n, n, eps, sp[2 * r], sp[2 * r + 1], scale, o + r * n);
      }
    });
  });
  return result;
}

}  // namespace

TORCH_LIBRARY_IMPL(hal_ext, CPU, m) {
  m.impl("joints_mse_loss", &joints_mse_loss_cpu);
  m.impl("_joints_mse_loss_backward", &joints_mse_loss_backward_cpu);
  m.impl("_joints_mse_loss_with_grad", &joints_mse_loss_with_grad_cpu);
  m.impl("joints_kl_loss", &joints_kl_loss_cpu);
  m.impl("_joints_kl_loss_forward", &joints_kl_loss_forward_cpu);
  m.impl("_joints_kl_loss_backward", &joints_kl_loss_backward_cpu);
  m.impl("_joints_kl_loss_with_grad", &joints_kl_loss_with_grad_cpu);
}

}  // namespace hal_ext
