#pragma once
// Argument checks and small helpers shared by the CPU and CUDA kernels of the keypoint losses.
#include <ATen/core/Tensor.h>

#include <optional>

#include "common/checks.h"

namespace hal_ext {
namespace joints_loss {

// The heatmaps are rows of n = H*W pixels: rows = B*K.
struct Rows {
  int64_t B, K, n;
  int64_t rows() const { return B * K; }
};

inline void check_heatmap(const at::Tensor& t, const char* name) {
  check_float_tensor(t, name);
  TORCH_CHECK_VALUE(t.dim() == 4, name, " must have 4 dimensions (B, K, H, W), got shape ", t.sizes());
}

// Reductions of the keypoint losses: 0 'none' (per keypoint, (B, K)) or 1 'mean' (scalar).
inline void check_reduction(int64_t reduction) {
  TORCH_CHECK_VALUE(reduction == 0 || reduction == 1,
                    "reduction must be 0 ('none') or 1 ('mean') for the keypoint losses, got ", reduction);
}

// target_weight (B, K): any shape with B*K elements, as tllib's target_weight.view(B, K, 1) accepts.
inline void check_weight(const std::optional<at::Tensor>& weight, const at::Tensor& like, const char* like_name,
                         int64_t B, int64_t K, const char* name) {
  if (!weight.has_value() || !weight->defined()) return;
  check_float_tensor(*weight, name);
  check_same_device(like, like_name, *weight, name);
  TORCH_CHECK_VALUE(weight->numel() == B * K, name, " must have shape (B, K) = (", B, ", ", K, ") (", B * K,
                    " elements), got shape ", weight->sizes());
}

inline Rows check_inputs(const at::Tensor& output, const at::Tensor& target,
                         const std::optional<at::Tensor>& weight, int64_t reduction) {
  check_heatmap(output, "output");
  check_paired(output, "output", target, "target");
  const Rows r{output.size(0), output.size(1), output.size(2) * output.size(3)};
  check_weight(weight, output, "output", r.B, r.K, "target_weight");
  check_reduction(reduction);
  return r;
}

inline void check_grad(const at::Tensor& grad, const at::Tensor& like, int64_t reduction, int64_t B, int64_t K) {
  check_float_tensor(grad, "grad");
  check_same_device(like, "output", grad, "grad");
  if (reduction == 0) {
    TORCH_CHECK_VALUE(grad.dim() == 2 && grad.size(0) == B && grad.size(1) == K, "grad must have shape (", B, ", ",
                      K, ") for reduction 'none', got ", grad.sizes());
  } else {
    check_scalar_grad(grad);
  }
}

// The accumulation dtype: float for float16/bfloat16/float32, double for float64.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The saved statistics of _joints_kl_loss_backward (CPU and CUDA kernels alike).
inline void check_kl_stats(const at::Tensor& stats, const at::Tensor& output, const Rows& s) {
  const auto acc = acc_dtype(output.scalar_type());
  TORCH_CHECK_VALUE(stats.scalar_type() == acc && stats.numel() == 2 * s.rows() && stats.device() == output.device(),
                    "stats must be the (B, K, 2) ", acc, " tensor that _joints_kl_loss_forward returned, got ",
                    stats.scalar_type(), " ", stats.sizes());
}

// target_weight as a contiguous (B*K,) tensor of the accumulation dtype, or an undefined tensor.
inline at::Tensor weight_rows(const std::optional<at::Tensor>& weight, at::ScalarType acc) {
  if (!weight.has_value() || !weight->defined()) return at::Tensor();
  return weight->to(acc).contiguous().view({-1});
}

}  // namespace joints_loss
}  // namespace hal_ext
