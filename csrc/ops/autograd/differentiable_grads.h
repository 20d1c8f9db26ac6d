#pragma once
// The gradients of hal_ext's losses written with differentiable ATen ops: what each autograd kernel's
// backward returns when it runs with grad mode on (`torch.autograd.grad(..., create_graph=True)`,
// `backward(create_graph=True)`). They are the reference's math (hal_ext.reference, i.e. tllib's), so
// the gradient is itself a differentiable function of the inputs and of the incoming gradient, and a
// second derivative or a gradient penalty matches tllib's. Piecewise-constant parts keep torch's
// derivatives (zero): sign, the argmaxes, the pseudo labels, the shift_log bound (strict, SPEC).
// Inputs whose gradient the fused op does not return (y_s, y_t, targets) are treated as constants.
// Half-precision inputs are computed in float32, as the kernels accumulate; every gradient is returned
// in its input's dtype. Reduction codes: 0 'none', 1 'mean', 2 'sum'.
#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace hal_ext {
namespace differentiable_grads {

// mean(|p1 - p2|): d/dp1 = g sign(p1 - p2) / numel, d/dp2 = -d/dp1.
std::tuple<at::Tensor, at::Tensor> classifier_discrepancy(const at::Tensor& grad, const at::Tensor& predictions1,
                                                          const at::Tensor& predictions2);

// -mean_k log(m_k + 1e-6), m the mean over dim 0: d/dp[i, k] = -g / (M N (m_k + 1e-6)), M the row size.
at::Tensor mcd_entropy(const at::Tensor& grad, const at::Tensor& predictions);

// log(min(x + offset, 1)): g / (x + offset) where x + offset < 1, else 0.
at::Tensor shift_log(const at::Tensor& grad, const at::Tensor& x, double offset);

// Per sample, h_s / h_t the first argmaxes of y_s / y_t over dim 1, p = softmax(y_t_adv) over dim 1,
// u = (1 - p[h_t]) + 1e-6, c_s = -margin w_s g, c_t = w_t g (g per sample after the reduction):
// d/dy_s_adv = c_s (softmax(y_s_adv) - onehot(h_s)); d/dy_t_adv = c_t [u < 1] p[h_t] (p - onehot(h_t)) / u.
std::tuple<at::Tensor, at::Tensor> classification_mdd(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                      const at::Tensor& y_t_adv, const at::Tensor& h_s,
                                                      const at::Tensor& h_t, const at::Tensor& w_s,
                                                      const at::Tensor& w_t, double margin, int64_t reduction);

// Elementwise L(y_adv - y) (loss_kind 0: |d|, 1: d^2), y constant: d/dy_s_adv = -margin w_s g L'(y_s_adv - y_s),
// d/dy_t_adv = w_t g L'(y_t_adv - y_t), with L' = sign(d) or 2 d. w_s / w_t may be undefined (ones).
std::tuple<at::Tensor, at::Tensor> regression_mdd(const at::Tensor& grad, const at::Tensor& y_s,
                                                  const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                                  const at::Tensor& y_t_adv, const at::Tensor& w_s,
                                                  const at::Tensor& w_t, double margin, int64_t loss_kind,
                                                  int64_t reduction);

// 0.5 (output - target)^2 w[b, k] per pixel, mean over everything ('mean', 1) or over the pixels
// ('none', 0): d/doutput = g (output - target) w / n, n = numel or H*W.
at::Tensor joints_mse_loss(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                           const at::Tensor& target_weight, int64_t reduction);

// Per (b, k) row: t = (target + eps) / sum(target + eps), loss = sum t (log t - log_softmax(output)),
// times w[b, k]: d/doutput = g_row w (softmax(output) - t), g_row = g / (B K) for 'mean' (1), and for
// 'none' (0) the incoming gradient of the row's loss.
at::Tensor joints_kl_loss(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                          const at::Tensor& target_weight, int64_t reduction, double epsilon);

}  // namespace differentiable_grads
}  // namespace hal_ext
