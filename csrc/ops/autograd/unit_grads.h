#pragma once
// The CPU forwards that write their gradients for a unit incoming gradient (classifier discrepancy,
// classification MDD, the keypoint losses, regression disparity): when to, and the backward that scales the
// saved unit gradients by the incoming gradient.
// - The graph is kept (retain_graph): scaled copies; the saved ones stay intact. (Under create_graph
//   the backward does not read them: it differentiates the reference's math, differentiable_grads.h.)
// - Otherwise they are scaled in place: they are ours alone (never an op output), so no memory
//   beyond them is needed; and an incoming gradient of exactly 1 (the loss differentiated directly)
//   leaves them as they are (x * 1 == x, bit for bit).
#include <ATen/core/Tensor.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/mul.h>
#include <c10/core/DispatchKeySet.h>
#include <torch/csrc/autograd/graph_task.h>

#include <tuple>
#include <utility>

namespace hal_ext {

// Whether the forward should write the unit gradients: the CPU kernel can (`kernel_supports`, the op's
// fused_grad_supported) and a gradient will be asked for. Decided before Function::apply, whose
// forward runs with grad mode off. Elsewhere the backward recomputes from the saved inputs: GPUs are
// memory-bound, and a stored gradient would be one more pass.
inline bool unit_grads_in_forward(bool kernel_supports, const at::Tensor& a, const at::Tensor& b) {
  return kernel_supports && a.device().is_cpu() && at::GradMode::is_enabled() &&
         (a.requires_grad() || b.requires_grad());
}

// The same for an op whose only differentiable input is `a`.
inline bool unit_grads_in_forward(bool kernel_supports, const at::Tensor& a) {
  return unit_grads_in_forward(kernel_supports, a, a);
}

// A 0-d CPU float/double tensor holding exactly 1. Tensors whose value cannot be read here (fake
// tensors while tracing, functional or functorch wrappers) count as "not 1".
inline bool is_one(const at::Tensor& t) {
  const c10::DispatchKeySet wrappers({c10::DispatchKey::Python, c10::DispatchKey::Functionalize,
                                      c10::DispatchKey::FuncTorchBatched, c10::DispatchKey::FuncTorchGradWrapper});
  if (t.dim() != 0 || !t.device().is_cpu() || t.layout() != at::kStrided || t.key_set().has_any(wrappers)) {
    return false;
  }
  if (t.scalar_type() == at::kFloat) return *t.const_data_ptr<float>() == 1.0f;
  if (t.scalar_type() == at::kDouble) return *t.const_data_ptr<double>() == 1.0;
  return false;
}

// grad: the incoming gradient; scale: grad shaped to broadcast against the unit gradient.
inline at::Tensor scale_unit_grad(at::Tensor unit, const at::Tensor& grad, const at::Tensor& scale) {
  if (torch::autograd::get_current_graph_task_keep_graph()) return at::mul(unit, scale);
  if (is_one(grad)) return unit;
  return unit.mul_(scale);
}

// The incoming gradient of a keypoint loss shaped to scale its (B, K, H, W) unit gradient: per heatmap
// for reduction 'none' ((B, K) -> (B, K, 1, 1)), the scalar as it is for 'mean'.
inline at::Tensor heatmap_scale(const at::Tensor& grad, int64_t reduction) {
  return reduction == 0 ? grad.reshape({grad.size(0), grad.size(1), 1, 1}) : grad;
}

// The same for two unit gradients.
inline std::tuple<at::Tensor, at::Tensor> scale_unit_grads(at::Tensor unit1, at::Tensor unit2, const at::Tensor& grad,
                                                           const at::Tensor& scale) {
  return {scale_unit_grad(std::move(unit1), grad, scale), scale_unit_grad(std::move(unit2), grad, scale)};
}

}  // namespace hal_ext
