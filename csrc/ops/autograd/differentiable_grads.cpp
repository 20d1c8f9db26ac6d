// The differentiable gradients of differentiable_grads.h: ATen ops only, each the reference's math.
#include "ops/autograd/differentiable_grads.h"

#include <ATen/ATen.h>

#include <vector>

#include "common/reduction.h"

namespace hal_ext {
namespace differentiable_grads {
namespace {

// Half-precision tensors in float32, as the kernels accumulate; others as they are.
at::Tensor accumulated(const at::Tensor& t) {
  const bool half = t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16;
  return half ? t.to(at::kFloat) : t;
}

at::Tensor times_weight(const at::Tensor& t, const at::Tensor& weight) {
  return weight.defined() ? t * accumulated(weight) : t;
}

// The incoming gradient of each per-sample loss of `sample_shape` ('mean': g / count, 'sum': g, 'none': g).
at::Tensor per_sample(const at::Tensor& grad, int64_t reduction, at::IntArrayRef sample_shape) {
  switch (to_reduction(reduction)) {
    case Reduction::None:
      return grad;
    case Reduction::Mean:
      return (grad / static_cast<double>(c10::multiply_integers(sample_shape))).expand(sample_shape);
    case Reduction::Sum:
      break;
  }
  return grad.expand(sample_shape);
}

at::Tensor one_hot(const at::Tensor& like, const at::Tensor& index) {
  return at::zeros_like(like).scatter_(1, index.unsqueeze(1), 1.0);
}

// The incoming gradient of each (b, k) row loss of a keypoint loss, shape (B, K, 1) (the mean over a
// row's pixels, or the KL sum over them): 'mean' (1) averages the B*K rows; 'none' (0) returns one loss per row (B, K), or per sample (B,), the mean of its K rows.
at::Tensor per_row(const at::Tensor& grad, int64_t reduction, int64_t B, int64_t K) {
  if (reduction == 1) return (grad / static_cast<double>(B * K)).expand({B, K, 1});
  if (grad.dim() == 1) return (grad / static_cast<double>(K)).reshape({B, 1, 1}).expand({B, K, 1});
  return grad.reshape({B, K, 1});
}

at::Tensor rows(const at::Tensor& t) { return t.flatten(2); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> classifier_discrepancy(const at::Tensor& grad, const at::Tensor& predictions1,
                                                          const at::Tensor& predictions2) {
  const at::Tensor g1 = at::sign(accumulated(predictions1) - accumulated(predictions2)) *
                        (grad / static_cast<double>(predictions1.numel()));
  return {g1.to(predictions1.scalar_type()), g1.neg().to(predictions2.scalar_type())};
}

at::Tensor mcd_entropy(const at::Tensor& grad, const at::Tensor& predictions) {
  const at::Tensor means = at::mean(accumulated(predictions), 0);
  const double count = static_cast<double>(means.numel()) * static_cast<double>(predictions.size(0));
  const at::Tensor row = grad.neg() / (means + 1e-6) / count;
  return row.unsqueeze(0).expand(predictions.sizes()).to(predictions.scalar_type());
}

at::Tensor shift_log(const at::Tensor& grad, const at::Tensor& x, double offset) {
  const at::Tensor shifted = accumulated(x) + offset;
  return at::where(shifted < 1, grad / shifted, 0).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor> classification_mdd(const at::Tensor& grad, const at::Tensor& y_s_adv,
                                                      const at::Tensor& y_t_adv, const at::Tensor& h_s,
                                                      const at::Tensor& h_t, const at::Tensor& w_s,
                                                      const at::Tensor& w_t, double margin, int64_t reduction) {
  const at::Tensor z_s = accumulated(y_s_adv), z_t = accumulated(y_t_adv);
  const at::Tensor g = per_sample(grad, reduction, h_s.sizes());
  const at::Tensor c_s = times_weight(g * -margin, w_s).unsqueeze(1);
  const at::Tensor c_t = times_weight(g, w_t).unsqueeze(1);
  const at::Tensor grad_s = c_s * (at::softmax(z_s, 1) - one_hot(z_s, h_s));
  const at::Tensor p = at::softmax(z_t, 1);
  const at::Tensor p_h = p.gather(1, h_t.unsqueeze(1));
  const at::Tensor u = (1 - p_h) + 1e-6;
  const at::Tensor grad_t = at::where(u < 1, c_t * p_h / u, 0) * (p - one_hot(z_t, h_t));
  return {grad_s.to(y_s_adv.scalar_type()), grad_t.to(y_t_adv.scalar_type())};
}

std::tuple<at::Tensor, at::Tensor> regression_mdd(const at::Tensor& grad, const at::Tensor& y_s,
                                                  const at::Tensor& y_s_adv, const at::Tensor& y_t,
                                                  const at::Tensor& y_t_adv, const at::Tensor& w_s,
                                                  const at::Tensor& w_t, double margin, int64_t loss_kind,
                                                  int64_t reduction) {
  auto derivative = [loss_kind](const at::Tensor& y, const at::Tensor& y_adv) {
    const at::Tensor d = accumulated(y_adv) - accumulated(y.detach());
    return loss_kind == 0 ? at::sign(d) : d * 2;
  };
  const at::Tensor g = per_sample(grad, reduction, y_s_adv.sizes());
  const at::Tensor grad_s = times_weight(g * -margin, w_s) * derivative(y_s, y_s_adv);
  const at::Tensor grad_t = times_weight(g, w_t) * derivative(y_t, y_t_adv);
  return {grad_s.to(y_s_adv.scalar_type()), grad_t.to(y_t_adv.scalar_type())};
}

at::Tensor joints_mse_loss(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                           const at::Tensor& target_weight, int64_t reduction) {
  const int64_t B = output.size(0), K = output.size(1);
  const at::Tensor diff = rows(accumulated(output)) - rows(accumulated(target.detach()));
  at::Tensor g = diff * (per_row(grad, reduction, B, K) / static_cast<double>(diff.size(2)));
  if (target_weight.defined()) g = g * accumulated(target_weight).reshape({B, K, 1});
  return g.reshape(output.sizes()).to(output.scalar_type());
}

at::Tensor joints_kl_loss(const at::Tensor& grad, const at::Tensor& output, const at::Tensor& target,
                          const at::Tensor& target_weight, int64_t reduction, double epsilon) {
  const int64_t B = output.size(0), K = output.size(1);
  const at::Tensor shifted = rows(accumulated(target.detach())) + epsilon;
  const at::Tensor t = shifted / shifted.sum(-1, /*keepdim=*/true);
  at::Tensor g = per_row(grad, reduction, B, K) * (at::softmax(rows(accumulated(output)), -1) - t);
  if (target_weight.defined()) g = g * accumulated(target_weight).reshape({B, K, 1});
  return g.reshape(output.sizes()).to(output.scalar_type());
}

}  // namespace differentiable_grads
}  // namespace hal_ext
